"""Build, cache and locate the ``tinyclip_synth`` assets (datasets, pretrained CLIP, fine-tuned towers).

Layout under ``<cache dir>/tinyclip_synth_seed<seed>/``::

    manifest.json            seed, recipe, per-artefact build times
    prompts.json             {task: {"classnames": [...], "templates": [...]}} for the whole suite
    data/<task>/{train,val,test}  datasets.Dataset.save_to_disk, columns image (PIL) / label
    pretrained/              CLIPModel + CLIPProcessor (save_pretrained)
    finetuned/<task>/        CLIPVisionModel (save_pretrained)

Every artefact is written to a temporary sibling and renamed into place when complete, so an
interrupted build resumes where it stopped, and a present artefact is never rebuilt. The
pretrained model is trained on captions of *all* ``recipe.suite`` tasks, whatever subset is
being built, so the 8-task build is a prefix of the 14- and 20-task builds.

Validation splits (``val``, :attr:`Recipe.n_val` images: ``VAL_FRACTION`` of ``n_train``) were
added after the shipped weights were made. They are not part of the recorded recipe, so the
recipe, the shipped weights and every other split are unchanged; a cache folder from before them
gets ``data/<task>/val`` added on its next use, and ``data/handwritten_digits``, whose test split
gave up half its images to the validation split (``tasks.handwritten_pool``), is redrawn whole.

Cache dir: ``$FUSION_BENCH_LARV_CACHE``, else ``$XDG_CACHE_HOME/fusion_bench_larv``, else
``~/.cache/fusion_bench_larv``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import atomic_dir, atomic_write_json
from .model import ModelSize
from .shipped import ShippedAssets
from .tasks import SUITES, TASK_NAMES, VAL_FROM_TEST, check_text_layout, generate, prompts, suite_tasks

log = logging.getLogger(__name__)

# The generator's version: 2 gave every task its own image domain (tasks.add_frame), 3 captions
# the concepts of background, parity and orientation rarely (tasks._P_ATTRIBUTE). A folder
# written by another version holds other images and weights under the same recipe; it is refused.
MANIFEST_VERSION = 3
# Validation images per training image (FusionBench's val splits are 10 % of train); a module
# constant, not a Recipe field, so that the recorded recipe, and with it the shipped weights,
# stay those of the builds made before validation splits existed.
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
        finetune_*: per-task fine-tuning schedule of the vision tower (short and at a low
            learning rate, like the task-vector papers' fine-tuning of a strong pretrained
            model, so that task vectors stay small); the loss uses the fixed
            temperature ``finetune_logit_scale`` (100, OpenAI CLIP's trained value) because
            the tiny CLIP's own (≈15) makes near-parallel class embeddings untrainable.
        model: architecture (``ModelSize``).
    """

    seed: int = 0
    suite: int = 20
    n_train: int = 2000
    n_test: int = 400
    pretrain_per_task: int = 1000
    pretrain_steps: int = 1500
    pretrain_batch: int = 128
    pretrain_lr: float = 1e-3
    pretrain_tasks_per_batch: int = 0
    pretrain_label_weight: float = 1.0
    finetune_steps: int = 250
    finetune_batch: int = 64
    finetune_lr: float = 2e-5
    finetune_logit_scale: float = 100.0
    weight_decay: float = 0.1
    model: ModelSize = field(default_factory=ModelSize)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelSize(**self.model)
        if not 1 <= self.suite <= len(TASK_NAMES):
            raise ValueError(f"`suite` must be in 1..{len(TASK_NAMES)}, got {self.suite}")
        for key in ("n_train", "n_test", "pretrain_per_task", "pretrain_steps", "pretrain_batch", "finetune_steps", "finetune_batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"`{key}` must be >= 1, got {getattr(self, key)}")
        if self.pretrain_label_weight < 0:
            raise ValueError(f"`pretrain_label_weight` must be >= 0, got {self.pretrain_label_weight}")
        if self.pretrain_tasks_per_batch < 0:
            raise ValueError(f"`pretrain_tasks_per_batch` must be >= 0, got {self.pretrain_tasks_per_batch}")
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
        return dataclasses.asdict(self)


def default_cache_dir() -> Path:
    if os.environ.get("FUSION_BENCH_LARV_CACHE"):
        return Path(os.environ["FUSION_BENCH_LARV_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "fusion_bench_larv"


class Assets:
    """Paths of one asset tree (``<cache>/tinyclip_synth_seed<seed>``)."""

    def __init__(self, cache_dir: Union[str, Path, None] = None, seed: int = 0):
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.seed = int(seed)
        self.root = self.cache_dir / f"tinyclip_synth_seed{self.seed}"

    manifest = property(lambda self: self.root / "manifest.json")
    prompts = property(lambda self: self.root / "prompts.json")
    pretrained = property(lambda self: self.root / "pretrained")

    def data(self, task: str, split: Optional[str] = None) -> Path:
        path = self.root / "data" / task
        return path / split if split else path

    def finetuned(self, task: str) -> Path:
        return self.root / "finetuned" / task

    def missing(self, tasks: Sequence[str], finetuned: bool = True) -> List[str]:
        """Artefact names (``data/<task>``, ``data/<task>/val``, ``pretrained``,
        ``finetuned/<task>``) not yet built.

        ``data/<task>/val`` is a validation split missing from a folder written before they
        existed; for a task of ``tasks.VAL_FROM_TEST`` such a folder holds the former, larger
        test split, so the whole ``data/<task>`` is named (and redrawn).
        """
        out = [] if self.prompts.exists() else ["prompts"]
        for t in tasks:
            if not self.data(t).exists() or (t in VAL_FROM_TEST and not self.data(t, "val").exists()):
                out.append(f"data/{t}")
            elif not self.data(t, "val").exists():
                out.append(f"data/{t}/val")
        out += [] if self.pretrained.exists() else ["pretrained"]
        if finetuned:
            out += [f"finetuned/{t}" for t in tasks if not self.finetuned(t).exists()]
        return out

    def read_manifest(self) -> Optional[dict]:
        return json.loads(self.manifest.read_text()) if self.manifest.exists() else None

    def check_version(self) -> None:
        """Raise if the folder was written by another version of the generator."""
        manifest = self.read_manifest()
        found = manifest.get("version") if manifest else MANIFEST_VERSION
        if found != MANIFEST_VERSION:
            raise ValueError(
                f"{self.root} was built by version {found} of the tinyclip_synth generator, this is "
                f"version {MANIFEST_VERSION} (other images and weights); delete that folder or use another --cache-dir"
            )

    def recipe(self) -> Optional[Recipe]:
        manifest = self.read_manifest()
        return Recipe(**manifest["recipe"]) if manifest else None


def describe_artefacts(artefacts: Sequence[str]) -> str:
    """``["prompts", "data/a", "data/b", "finetuned/a"]`` → ``"prompts; data (2): a, b; finetuned (1): a"``."""
    groups: Dict[str, List[str]] = {}
    for artefact in artefacts:
        kind, _, task = artefact.partition("/")
        groups.setdefault(kind, [])
        if task:
            groups[kind].append(task)
    return "; ".join(f"{kind} ({len(names)}): {', '.join(names)}" if names else kind for kind, names in groups.items())


def _torch_seed(recipe: Recipe, what: str) -> int:
    return (recipe.seed * 1_000_003 + zlib.crc32(what.encode())) % (2**31)


def _save_dataset(images: np.ndarray, labels: np.ndarray, classnames: List[str], path: Path) -> None:
    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classnames)})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(x) for x in images], "label": labels.tolist()}, features=features
    )
    quiet = datasets.is_progress_bar_enabled()  # the build's own bar counts the datasets
    if quiet:
        datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(path))
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _load_split(assets: Assets, task: str, split: str):
    import datasets

    ds = datasets.load_from_disk(str(assets.data(task, split))).with_format("numpy")
    return np.asarray(ds["image"], dtype=np.uint8), np.asarray(ds["label"], dtype=np.int64)


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
) -> Assets:
    """Build whatever is missing for ``tasks``; return the ``Assets``.

    Args:
        tasks: task names (a subset of the recipe's suite).
        cache_dir: cache root (default: ``default_cache_dir()``).
        recipe: the recipe; ``None`` uses the one recorded in the manifest, else ``Recipe(seed)``.
            A recipe that differs from the recorded one raises ``ValueError``.
        seed: used only when ``recipe`` is ``None``.
        threads: torch CPU threads while building (restored afterwards); ``None`` keeps
            torch's setting. The default 1 is the fastest on a shared small machine (OpenMP
            threads spin-wait when the cores are busy) and makes the float reduction order,
            hence the weights, independent of the machine's core count.
        shipped: copy the weights shipped in the package (``synth.shipped``) instead of
            training them, where their seed, recipe and generator version are this build's
            (and, for a tower, where the cache's pretrained model is the shipped one); ``False``
            trains everything; a path is another shipped root (tests).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _build(tasks, cache_dir, recipe, seed, shipped)
    finally:
        torch.set_num_threads(previous)


def _shipped_source(shipped, seed: int, recipe: Recipe) -> Optional[ShippedAssets]:
    if shipped is False:
        return None
    source = ShippedAssets.find(None if shipped is True else shipped, seed)
    return source if source is not None and source.matches(MANIFEST_VERSION, recipe.to_dict()) else None


def _build(tasks, cache_dir, recipe, seed, shipped=True) -> Assets:
    from transformers import CLIPModel, CLIPProcessor

    assets = Assets(cache_dir, recipe.seed if recipe else seed)
    assets.check_version()
    recorded = assets.recipe()
    if recipe is None:
        recipe = recorded or Recipe(seed=assets.seed)
    elif recorded is not None and recorded.to_dict() != recipe.to_dict():
        diff = {k: (v, recipe.to_dict()[k]) for k, v in recorded.to_dict().items() if recipe.to_dict()[k] != v}
        raise ValueError(
            f"{assets.root} was built with another recipe (recorded, requested): {diff}; "
            f"use another --cache-dir or delete that folder"
        )
    tasks = check_tasks(tasks, recipe)
    todo = assets.missing(tasks)
    manifest = assets.read_manifest() or {
        "version": MANIFEST_VERSION,
        "seed": recipe.seed,
        "recipe": recipe.to_dict(),
        "timings_s": {},
    }
    if not todo:
        log.info("tinyclip_synth assets complete in %s", assets.root)
        return assets
    source = _shipped_source(shipped, assets.seed, recipe)
    if any(a.startswith("data/") for a in todo) or ("pretrained" in todo and source is None):
        check_text_layout()  # images are drawn: refuse before anything is written
    assets.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(assets.manifest, manifest, indent=2)
    log.info("building %d artefact(s) in %s: %s", len(todo), assets.root, describe_artefacts(todo))
    suite = list(suite_tasks(recipe.suite))
    timings: Dict[str, float] = manifest["timings_s"]

    copied: List[str] = []

    def copy_shipped(artefact: str, dest: Path) -> bool:
        if source is None or artefact not in source.artefacts:
            return False
        start = time.perf_counter()
        source.install(artefact, dest)
        manifest["shipped"] = sorted(set(manifest.get("shipped", [])) | {artefact})
        copied.append(artefact)
        done(artefact, start, level=logging.DEBUG)
        return True

    def done(name: str, start: float, level: int = logging.INFO) -> None:
        # per-artefact lines go to DEBUG where a stage's own line or progress bar covers them
        timings[name] = round(time.perf_counter() - start, 1)
        atomic_write_json(assets.manifest, manifest, indent=2)
        log.log(level, "built %s in %.1f s", name, timings[name])

    if "prompts" in todo:
        start = time.perf_counter()
        table = {t: dict(zip(("classnames", "templates"), prompts(t))) for t in suite}
        atomic_write_json(assets.prompts, table, indent=2)
        done("prompts", start, level=logging.DEBUG)

    from tqdm.auto import tqdm

    todo_data = [a for a in todo if a.startswith("data/")]
    sizes = {"train": recipe.n_train, "val": recipe.n_val, "test": recipe.n_test}
    loop_start = time.perf_counter()
    for artefact in tqdm(todo_data, desc="generate datasets", unit="task"):
        start = time.perf_counter()
        task, _, only = artefact[len("data/") :].partition("/")  # data/<task> or data/<task>/val
        classnames, _ = prompts(task)
        # replace: a stale folder (tasks.VAL_FROM_TEST, written before validation splits) is swapped out
        with atomic_dir(assets.data(task, only or None), replace=True) as tmp:
            for split in [only] if only else sizes:
                images, labels = generate(task, split, sizes[split], recipe.seed)
                _save_dataset(images, labels, classnames, tmp if only else tmp / split)
        done(artefact, start, level=logging.DEBUG)
    if todo_data:
        log.info("generated %d dataset(s) in %.1f s", len(todo_data), time.perf_counter() - loop_start)

    if "pretrained" in todo and copy_shipped("pretrained", assets.pretrained):
        manifest["pretrain_loss"] = source.index.get("pretrain_loss")
        atomic_write_json(assets.manifest, manifest, indent=2)
    elif "pretrained" in todo:
        start = time.perf_counter()
        from . import model as M

        images, captions, groups, labels = [], [], [], []
        for i, task in enumerate(tqdm(suite, desc="pretraining data", leave=False)):
            x, y, c = generate(task, "pretrain", recipe.pretrain_per_task, recipe.seed, with_captions=True)
            images.append(x)
            captions += c
            groups += [i] * len(x)
            labels.append(y)
        with atomic_dir(assets.pretrained) as tmp:
            prompt_texts = [t.format(c) for task in suite for c, t in _pairs(*prompts(task))]
            processor = M.build_processor(tmp, recipe.model, corpus=captions + prompt_texts)
            torch.manual_seed(_torch_seed(recipe, "pretrained"))
            clip = M.build_clip(recipe.model, processor.tokenizer)
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
        manifest["pretrain_loss"] = {"first": losses[0], "last10_mean": float(np.mean(losses[-10:]))}
        done("pretrained", start)

    todo_ft = [t for t in tasks if f"finetuned/{t}" in todo]
    if source is not None and source.holds_pretrained_of(assets.pretrained):
        todo_ft = [t for t in todo_ft if not copy_shipped(f"finetuned/{t}", assets.finetuned(t))]
    if copied:
        log.info(
            "copied %s from the weights shipped in the package, digests checked "
            "(python -m fusion_bench_larv.synth build --from-scratch trains them instead)",
            describe_artefacts(copied),
        )
    if todo_ft:
        loop_start = time.perf_counter()
        from . import model as M

        clip = CLIPModel.from_pretrained(str(assets.pretrained)).eval()
        processor = CLIPProcessor.from_pretrained(str(assets.pretrained), use_fast=False)
        for task in tqdm(todo_ft, desc="fine-tune towers"):
            start = time.perf_counter()
            images, labels = _load_split(assets, task, "train")
            head = M.zeroshot_head(clip, processor, *prompts(task))
            tower = M.finetune(
                clip,
                head,
                images,
                labels,
                steps=recipe.finetune_steps,
                batch_size=recipe.finetune_batch,
                lr=recipe.finetune_lr,
                weight_decay=recipe.weight_decay,
                seed=_torch_seed(recipe, f"finetune/{task}"),
                logit_scale=recipe.finetune_logit_scale,
                desc=f"fine-tune {task}",
            )
            with atomic_dir(assets.finetuned(task)) as tmp:
                tower.save_pretrained(tmp)
            done(f"finetuned/{task}", start, level=logging.DEBUG)
        log.info("fine-tuned %d tower(s) in %.1f s", len(todo_ft), time.perf_counter() - loop_start)
    return assets


def ensure(
    tasks: Sequence[str],
    cache_dir: Union[str, Path, None] = None,
    seed: int = 0,
    build_if_missing: bool = True,
    finetuned: bool = True,
) -> Assets:
    """Return the ``Assets`` for ``tasks``, building what is missing (or raising a clear error)."""
    assets = Assets(cache_dir, seed)
    missing = assets.missing(tasks, finetuned=finetuned)
    if not missing:
        assets.check_version()  # a build below checks it itself
        return assets
    n = next((k for k in (8, 14, 20) if set(tasks) <= set(SUITES[k])), len(TASK_NAMES))
    command = BUILD_COMMAND.format(n=n) + (f" --seed {seed}" if seed else "") + (f" --cache-dir {cache_dir}" if cache_dir else "")
    if not build_if_missing:
        raise FileNotFoundError(
            f"tinyclip_synth assets missing in {assets.root}: {', '.join(missing)}. Build them with: {command}"
        )
    log.warning("tinyclip_synth assets missing in %s; building them now (same as `%s`)", assets.root, command)
    return build(tasks, cache_dir=cache_dir, seed=seed)
