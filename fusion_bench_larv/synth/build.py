"""Build, cache and locate the ``tinyclip_synth`` assets (datasets, pretrained CLIP, fine-tuned towers).

Layout under ``<cache dir>/tinyclip_synth_seed<seed>/``::

    manifest.json            seed, recipe, per-artefact build times and digests
    prompts.json             {task: {"classnames": [...], "templates": [...]}} for the whole suite
    data/<task>/{train,val,test}  datasets.Dataset.save_to_disk, columns image (PIL) / label
    pretrained/              CLIPModel + CLIPProcessor (save_pretrained)
    finetuned/<task>/        CLIPVisionModel (save_pretrained)

Every artefact is written to a temporary sibling and renamed into place when complete, so an
interrupted build (even a SIGKILL) resumes where it stopped, and a present artefact is not
rebuilt unless it is damaged. One build per cache folder runs at a time, under an advisory lock
(``Assets.lock()``, ``.tinyclip_synth_seed<seed>.lock`` next to the folder): a second process
waits, with a log line, and then finds the artefacts built. The manifest records every
artefact's digest (:mod:`.cache`, :mod:`.digests`); ``ensure`` (the pools) and ``build`` verify
them, once per process, and rebuild a damaged artefact with a warning naming the file. The
pretrained model is trained on captions of *all* ``recipe.suite`` tasks, whatever subset is
being built, so the 8-task build is a prefix of the 14- and 20-task builds.

Validation splits (``val``, :attr:`Recipe.n_val` images: ``VAL_FRACTION`` of ``n_train``) are
derived from the recipe, not recorded in it (``handwritten_digits`` splits its UCI test pool).

Cache dir: ``$FUSION_BENCH_LARV_CACHE``, else ``$XDG_CACHE_HOME/fusion_bench_larv``, else
``~/.cache/fusion_bench_larv``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import atomic_dir, atomic_write_json
from ..linalg import torch_threads
from .cache import (  # noqa: F401 (Assets, default_cache_dir, describe_artefacts: imported from here too)
    MANIFEST_VERSION, Assets, default_cache_dir, describe_artefacts, record_if_writable, repair, writable_lock,
)
from .datasets import generate_datasets, write_prompts
from .digests import record_artefact, verify
from .domains import apply_domain
from .model import ModelSize
from .shipped import ShippedAssets
from .tasks import SUITES, TASK_NAMES, check_text_layout, generate, prompts, suite_tasks

log = logging.getLogger(__name__)

# Validation images per training image (FusionBench's val splits are 10 % of train).
VAL_FRACTION = 0.1
BUILD_COMMAND = "python -m fusion_bench_larv.synth build --tasks {n}"


@dataclass
class Recipe:
    """Everything that determines the assets (recorded in the manifest).

    Attributes:
        seed: suite seed (data, initialisation, batch order).
        suite: the first ``suite`` tasks of ``tasks.SUITE_ORDER`` caption the pretraining data
            (in the generator's order, ``tasks.suite_tasks``); every built task must be one of them.
        n_train / n_test: images per task and split (``handwritten_digits`` is capped by the
            1797 UCI digits: 1438 train, 180 test). The validation split has :attr:`n_val`.
        pretrain_per_task: pretraining images per suite task (own random stream).
        pretrain_*: contrastive pretraining schedule (AdamW, cosine, 10% warm-up); with
            ``pretrain_tasks_per_batch`` > 0 each batch mixes that many tasks (hard negatives),
            with 0 batches are uniform over the suite. ``pretrain_label_weight`` > 0 adds the
            supervised multi-task term of ``model.pretrain`` (per-task linear probes on the
            vision tower, thrown away afterwards) with that weight; 0 is contrastive only.
        finetune_*: per-task fine-tuning schedule of the vision tower (short, like the
            task-vector papers' fine-tuning of a strong pretrained model); the loss uses the
            fixed temperature ``finetune_logit_scale`` because the tiny CLIP's own (≈15) makes
            near-parallel class embeddings untrainable.
        task_grating / task_colour_mix: each task's own low-level domain, a faint grating of
            this amplitude and a colour mixing of this spread (:mod:`.domains`); 0 and 0 is none.
        pretrain_threads: torch CPU threads of the pretraining, whatever the build's
            ``threads``: the float reduction order, hence the pretrained weights, depend on it.
        model: architecture (``ModelSize``).

    The defaults are the recipe of generator version 4 (docs/benchmark.md, "Layer-wise
    behaviour"): chosen with the bare, zero-shot, individual and layer-wise numbers only.
    """

    seed: int = 0
    suite: int = 20
    n_train: int = 2000
    n_test: int = 400
    pretrain_per_task: int = 1000
    pretrain_steps: int = 3000
    pretrain_batch: int = 128
    pretrain_lr: float = 1e-3
    pretrain_tasks_per_batch: int = 0
    pretrain_label_weight: float = 3.0
    finetune_steps: int = 180
    finetune_batch: int = 64
    finetune_lr: float = 3.5e-4
    finetune_logit_scale: float = 50.0
    weight_decay: float = 0.1
    task_grating: float = 40.0
    task_colour_mix: float = 0.25
    pretrain_threads: int = 2
    model: ModelSize = field(default_factory=ModelSize)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelSize(**self.model)
        if not 1 <= self.suite <= len(TASK_NAMES):
            raise ValueError(f"`suite` must be in 1..{len(TASK_NAMES)}, got {self.suite}")
        for key in ("n_train", "n_test", "pretrain_per_task", "pretrain_steps", "pretrain_batch", "finetune_steps", "finetune_batch", "pretrain_threads"):
            if getattr(self, key) < 1:
                raise ValueError(f"`{key}` must be >= 1, got {getattr(self, key)}")
        if self.pretrain_label_weight < 0:
            raise ValueError(f"`pretrain_label_weight` must be >= 0, got {self.pretrain_label_weight}")
        if self.pretrain_tasks_per_batch < 0:
            raise ValueError(f"`pretrain_tasks_per_batch` must be >= 0, got {self.pretrain_tasks_per_batch}")
        for key in ("task_grating", "task_colour_mix"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"`{key}` must be >= 0, got {getattr(self, key)}")
        for key in ("pretrain_lr", "finetune_lr", "finetune_logit_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"`{key}` must be > 0, got {getattr(self, key)}")

    @property
    def n_val(self) -> int:
        """Validation images per task: ``VAL_FRACTION`` of ``n_train``, at least 1 (200 by
        default; ``handwritten_digits`` is capped at its 179-image validation pool). Derived,
        not recorded: see ``VAL_FRACTION``."""
        return max(1, int(self.n_train * VAL_FRACTION))

    def to_dict(self) -> dict:
        """The recipe as recorded in a manifest and in the shipped index: every field."""
        return dataclasses.asdict(self)


def _torch_seed(recipe: Recipe, what: str) -> int:
    return (recipe.seed * 1_000_003 + zlib.crc32(what.encode())) % (2**31)


def _pairs(classnames, templates):
    return [(c, t) for c in classnames for t in templates]


def check_tasks(tasks: Sequence[str], recipe: Recipe) -> List[str]:
    suite = suite_tasks(recipe.suite)
    bad = [t for t in tasks if t not in suite]
    if bad:
        raise ValueError(f"tasks {bad} are not in this recipe's suite (suite={recipe.suite}): {list(suite)}")
    return list(tasks)


def build(
    tasks: Sequence[str],
    cache_dir: Union[str, Path, None] = None,
    recipe: Optional[Recipe] = None,
    seed: int = 0,
    threads: Optional[int] = 1,
    shipped: Union[bool, str, Path] = True,
    jobs: int = 1,
) -> Assets:
    """Build whatever is missing for ``tasks``; return the ``Assets``.

    Args:
        tasks: task names (a subset of the recipe's suite).
        cache_dir: cache root (default: ``default_cache_dir()``).
        recipe: the recipe; ``None`` uses the one recorded in the manifest, else ``Recipe(seed)``.
            A recipe that differs from the recorded one raises ``ValueError``.
        seed: used only when ``recipe`` is ``None``.
        threads: torch CPU threads while building (restored afterwards; the pretraining takes
            the recipe's ``pretrain_threads``); ``None`` keeps torch's setting. The default 1
            gives each tower the recorded float reduction order, hence its recorded weights.
        shipped: copy the weights shipped in the package (``synth.shipped``) instead of
            training them, where their seed, recipe and generator version are this build's
            (and, for a tower, where the cache's pretrained model is the shipped one); ``False``
            trains everything; a path is another shipped root (tests).
        jobs: towers fine-tuned at once, in worker processes that share ``threads``, at least
            one thread each (:mod:`.towers`; the same weights as 1, which trains them here one
            by one).
    """
    from .towers import check_jobs

    check_jobs(jobs)
    with torch_threads(threads):
        return _build(tasks, cache_dir, recipe, seed, shipped, jobs, threads)


def _shipped_source(shipped, seed: int, recipe: Recipe) -> Optional[ShippedAssets]:
    if shipped is False:
        return None
    source = ShippedAssets.find(None if shipped is True else shipped, seed)
    return source if source is not None and source.matches(MANIFEST_VERSION, recipe.to_dict()) else None


def _recorded_recipe(assets: Assets) -> Optional[Recipe]:
    manifest = assets.read_manifest()
    return Recipe(**manifest["recipe"]) if manifest else None


def _checked_recipe(assets: Assets, recipe: Optional[Recipe], tasks: Sequence[str]):
    """(recipe, tasks): the requested recipe, else the recorded one, else ``Recipe(seed)``;
    raise if the folder is another generator version's or another recipe's."""
    assets.check_version()
    recorded = _recorded_recipe(assets)
    if recipe is None:
        recipe = recorded or Recipe(seed=assets.seed)
    elif recorded is not None and recorded.to_dict() != recipe.to_dict():
        old, new = dataclasses.asdict(recorded), dataclasses.asdict(recipe)
        diff = {k: (v, new[k]) for k, v in old.items() if new[k] != v}
        raise ValueError(
            f"{assets.root} was built with another recipe (recorded, requested): {diff}; "
            f"use another --cache-dir or delete that folder"
        )
    return recipe, check_tasks(tasks, recipe)


def new_manifest(recipe: Recipe) -> dict:
    """The manifest of a folder where nothing is built yet (a build of ``recipe`` fills it)."""
    return {"version": MANIFEST_VERSION, "seed": recipe.seed, "recipe": recipe.to_dict(), "timings_s": {}, "digests": {}}


def _draws(todo: Sequence[str], source: Optional[ShippedAssets]) -> bool:
    """Whether building ``todo`` draws images (datasets, or pretraining captions)."""
    return any(a.startswith("data/") for a in todo) or ("pretrained" in todo and source is None)


def _build(tasks, cache_dir, recipe, seed, shipped=True, jobs=1, threads=1) -> Assets:
    assets = Assets(cache_dir, recipe.seed if recipe else seed)
    resolved, checked = _checked_recipe(assets, recipe, tasks)
    if _draws(assets.missing(checked), _shipped_source(shipped, assets.seed, resolved)):
        check_text_layout()  # images are drawn: refuse before anything is written
    with writable_lock(assets):
        recipe, tasks = _checked_recipe(assets, recipe, tasks)  # another build may have run meanwhile
        source = _shipped_source(shipped, assets.seed, recipe)
        repair(assets, assets.artefacts(tasks))
        todo = assets.missing(tasks)
        if not todo:
            log.info("tinyclip_synth assets complete in %s", assets.root)
            return assets
        if _draws(todo, source):
            check_text_layout()
        if assets.read_manifest() is None:
            atomic_write_json(assets.manifest, new_manifest(recipe), indent=2)
        log.info("building %d artefact(s) in %s: %s", len(todo), assets.root, describe_artefacts(todo))
        write_prompts(assets, recipe, todo)
        generate_datasets(assets, recipe, tasks, todo)
        copied = _pretrained(assets, recipe, todo, source)
        _finetuned(assets, recipe, tasks, todo, source, copied, jobs, threads)
    return assets


def _copy_shipped(assets: Assets, source: Optional[ShippedAssets], artefact: str, **fields) -> bool:
    """Copy ``artefact`` from the shipped weights, if they hold it; record it as shipped."""
    if source is None or artefact not in source.artefacts:
        return False
    start = time.perf_counter()
    source.install(artefact, assets.path(artefact))
    shipped = sorted(set(assets.read_manifest().get("shipped", [])) | {artefact})
    record_artefact(assets, artefact, time.perf_counter() - start, shipped=shipped, **fields)
    return True


def _pretrained(assets: Assets, recipe: Recipe, todo: Sequence[str], source: Optional[ShippedAssets]) -> List[str]:
    """Copy or pretrain the CLIP; return the artefacts copied from the shipped weights."""
    if "pretrained" not in todo:
        return []
    if _copy_shipped(assets, source, "pretrained", pretrain_loss=source and source.index.get("pretrain_loss")):
        return ["pretrained"]
    from tqdm.auto import tqdm

    from . import model as M

    start = time.perf_counter()
    suite = list(suite_tasks(recipe.suite))
    images, captions, groups, labels = [], [], [], []
    for i, task in enumerate(tqdm(suite, desc="pretraining data", leave=False)):
        x, y, c = generate(task, "pretrain", recipe.pretrain_per_task, recipe.seed, with_captions=True)
        x = apply_domain(x, task, recipe.task_grating, recipe.task_colour_mix)
        images.append(x)
        captions += c
        groups += [i] * len(x)
        labels.append(y)
    with atomic_dir(assets.pretrained) as tmp:
        prompt_texts = [t.format(c) for task in suite for c, t in _pairs(*prompts(task))]
        processor = M.build_processor(tmp, recipe.model, corpus=captions + prompt_texts)
        torch.manual_seed(_torch_seed(recipe, "pretrained"))
        clip = M.build_clip(recipe.model, processor.tokenizer)
        with torch_threads(recipe.pretrain_threads):  # the recipe's, whatever the build's
            losses = M.pretrain(
                clip,
                processor,
                np.concatenate(images),
                captions,
                steps=recipe.pretrain_steps,
                batch_size=recipe.pretrain_batch,
                lr=recipe.pretrain_lr,
                weight_decay=recipe.weight_decay,
                seed=_torch_seed(recipe, "pretrain-batches"),
                groups=np.asarray(groups) if recipe.pretrain_tasks_per_batch > 0 else None,
                groups_per_batch=recipe.pretrain_tasks_per_batch,
                task_ids=np.asarray(groups),
                labels=np.concatenate(labels),
                num_classes=[len(prompts(task)[0]) for task in suite],
                label_weight=recipe.pretrain_label_weight,
            )
        clip.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    loss = {"first": losses[0], "last10_mean": float(np.mean(losses[-10:]))}
    seconds = time.perf_counter() - start
    record_artefact(assets, "pretrained", seconds, pretrain_loss=loss)
    log.info("built pretrained in %.1f s", seconds)
    return []


def _finetuned(assets: Assets, recipe: Recipe, tasks: Sequence[str], todo: Sequence[str],
               source: Optional[ShippedAssets], copied: List[str], jobs: int = 1, threads: Optional[int] = 1) -> None:
    """Copy the shipped towers where the cache holds the shipped pretrained model; fine-tune the rest."""
    todo_ft = [t for t in tasks if f"finetuned/{t}" in todo]
    if source is not None and source.holds_pretrained_of(assets.pretrained):
        copied += [f"finetuned/{t}" for t in todo_ft if _copy_shipped(assets, source, f"finetuned/{t}")]
        todo_ft = [t for t in todo_ft if f"finetuned/{t}" not in copied]
    if copied:
        log.info(
            "copied %s from the weights shipped in the package, digests checked "
            "(python -m fusion_bench_larv.synth build --from-scratch trains them instead)",
            describe_artefacts(copied),
        )
    if not todo_ft:
        return
    from .towers import finetune_towers

    def seed_of(task: str) -> int:
        return _torch_seed(recipe, f"finetune/{task}")

    def record(task: str, seconds: float) -> None:
        record_artefact(assets, f"finetuned/{task}", seconds)

    start = time.perf_counter()
    finetune_towers(assets, recipe, todo_ft, seed_of, record, jobs=jobs, threads=threads)
    log.info("fine-tuned %d tower(s) in %.1f s%s", len(todo_ft), time.perf_counter() - start,
             f" ({min(jobs, len(todo_ft))} processes)" if jobs > 1 else "")


def ensure(
    tasks: Sequence[str],
    cache_dir: Union[str, Path, None] = None,
    seed: int = 0,
    build_if_missing: bool = True,
    finetuned: bool = True,
) -> Assets:
    """Return the ``Assets`` for ``tasks`` once every artefact they need is present and matches
    its recorded digest (checked once per process); build what is missing or damaged first, or,
    with ``build_if_missing=False``, raise a clear error naming the build command."""
    assets = Assets(cache_dir, seed)
    missing = assets.missing(tasks, finetuned=finetuned)
    damaged: Dict[str, str] = {}
    if not missing:
        assets.check_version()  # a build below checks it itself
        damaged, unrecorded = verify(assets, assets.artefacts(tasks, finetuned))
        if not damaged:
            record_if_writable(assets, unrecorded)
            return assets
    n = next((k for k in (8, 14, 20) if set(tasks) <= set(SUITES[k])), len(TASK_NAMES))
    command = BUILD_COMMAND.format(n=n) + (f" --seed {seed}" if seed else "") + (f" --cache-dir {cache_dir}" if cache_dir else "")
    if not build_if_missing and missing:
        raise FileNotFoundError(
            f"tinyclip_synth assets missing in {assets.root}: {', '.join(missing)}. Build them with: {command}"
        )
    if not build_if_missing:
        raise ValueError(
            f"tinyclip_synth assets damaged in {assets.root}: {'; '.join(damaged.values())}. "
            f"Rebuild them with: {command} (it rebuilds the damaged artefacts only)"
        )
    if missing:  # the build logs what it builds, or that it waits for another process's build
        log.warning("tinyclip_synth assets missing in %s: %s (the same build as `%s`)",
                    assets.root, describe_artefacts(missing), command)
    return build(tasks, cache_dir=cache_dir, seed=seed)

