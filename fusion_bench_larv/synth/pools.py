"""FusionBench model / task pools over the ``tinyclip_synth`` assets (built on first use).

``modelpool=tinyclip_synth8`` (14, 20) selects :class:`SynthCLIPVisionModelPool` and, through
its defaults list, ``taskpool=larv/tinyclip_synth8`` (:class:`SynthCLIPTaskPool`);
``taskpool=larv/tinyclip_synth8_val`` evaluates on the validation splits instead. Both find
the assets in the cache (see :mod:`fusion_bench_larv.synth.build`) and build the missing ones
first, unless ``build_if_missing: false``, in which case they stop with the command to run.
"""

from __future__ import annotations

import json
import logging
from typing import Literal, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion_bench.modelpool import CLIPVisionModelPool

from ..taskpools.clip_classification import CLIPClassificationTaskPool
from .build import Assets, ensure
from .corrupted import ensure_corrupted, normalize

log = logging.getLogger(__name__)

__all__ = ["SynthCLIPVisionModelPool", "SynthCLIPTaskPool"]


def _task_list(tasks) -> list:
    if isinstance(tasks, (DictConfig, ListConfig)):
        tasks = OmegaConf.to_container(tasks, resolve=True)
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"`tasks` must be a non-empty list of task names, got {tasks!r}")
    return [str(t) for t in tasks]


def _dataset_config(assets: Assets, task: str, split: str) -> DictConfig:
    return _load_from_disk(assets.data(task, split))


def _load_from_disk(path) -> DictConfig:
    return DictConfig({"_target_": "datasets.load_from_disk", "dataset_path": str(path)})


class SynthCLIPVisionModelPool(CLIPVisionModelPool):
    """``CLIPVisionModelPool`` over the synthetic suite's pretrained and fine-tuned towers.

    Args:
        tasks: task names (fine-tuned models to pool).
        cache_dir: asset cache root (``null``: ``$FUSION_BENCH_LARV_CACHE`` / XDG default).
        seed: suite seed.
        build_if_missing: build missing assets (else raise naming the build command).
        individual: if a task name, the pool holds only that task's fine-tuned tower, as
            ``_pretrained_`` (FusionBench's ``*_individual`` pools): ``method=dummy`` then
            evaluates the individual fine-tuned model.
        **kwargs: passed to ``CLIPVisionModelPool``.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        cache_dir: Optional[str] = None,
        seed: int = 0,
        build_if_missing: bool = True,
        individual: Optional[str] = None,
        **kwargs,
    ):
        tasks = _task_list(tasks)
        if individual is not None and individual not in tasks:
            raise ValueError(f"`individual` must be one of `tasks` {tasks}, got {individual!r}")
        assets = ensure(tasks, cache_dir=cache_dir, seed=seed, build_if_missing=build_if_missing)
        if individual is None:
            models = {"_pretrained_": str(assets.pretrained)} | {t: str(assets.finetuned(t)) for t in tasks}
        else:
            models = {"_pretrained_": str(assets.finetuned(individual))}
        for key in ("models", "processor", "train_datasets", "val_datasets", "test_datasets"):
            if kwargs.pop(key, None) is not None:
                log.warning("SynthCLIPVisionModelPool sets `%s` itself; the configured value is ignored", key)
        super().__init__(
            DictConfig(models),
            processor=str(assets.pretrained),
            train_datasets=DictConfig({t: _dataset_config(assets, t, "train") for t in tasks}),
            val_datasets=DictConfig({t: _dataset_config(assets, t, "val") for t in tasks}),
            test_datasets=DictConfig({t: _dataset_config(assets, t, "test") for t in tasks}),
            **kwargs,
        )
        self.tasks, self.cache_dir, self.seed = tasks, cache_dir, seed
        self.build_if_missing, self.individual = build_if_missing, individual


class SynthCLIPTaskPool(CLIPClassificationTaskPool):
    """``CLIPClassificationTaskPool`` over the synthetic suite's test (or validation) sets and prompts.

    The zero-shot heads use the pretrained synthetic CLIP's text tower. Args as for
    :class:`SynthCLIPVisionModelPool` (``tasks``, ``cache_dir``, ``seed``,
    ``build_if_missing``), plus ``split``: ``"test"`` (default) or ``"val"``, the validation
    splits (disjoint from test and from the fine-tuning data; docs/benchmark.md), to choose
    hyperparameters without looking at the test sets; and ``corruption``: ``null`` or
    ``"clean"`` evaluates the split as it is, a corruption name
    (``synth.corruptions.CORRUPTIONS``) the corrupted copies of the test splits
    (:mod:`fusion_bench_larv.synth.corrupted`: generated on first use, checked on every use).
    ``dataloader_kwargs`` and the rest go to the parent class.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        cache_dir: Optional[str] = None,
        seed: int = 0,
        build_if_missing: bool = True,
        split: Literal["test", "val"] = "test",
        corruption: Optional[str] = None,
        **kwargs,
    ):
        tasks = _task_list(tasks)
        if split not in ("test", "val"):
            raise ValueError(f"`split` must be 'test' or 'val', got {split!r}")
        assets = ensure(tasks, cache_dir=cache_dir, seed=seed, build_if_missing=build_if_missing, finetuned=False)
        if normalize(corruption) is None:
            test_datasets = {t: _dataset_config(assets, t, split) for t in tasks}
        elif split != "test":
            raise ValueError(f"`corruption` {corruption!r} corrupts the test splits; it needs split 'test', got {split!r}")
        else:
            test_datasets = {t: _load_from_disk(p) for t, p in ensure_corrupted(assets, tasks, corruption).items()}
        table = json.loads(assets.prompts.read_text())
        for key in ("test_datasets", "clip_model", "processor", "classnames", "templates"):
            if kwargs.pop(key, None) is not None:
                log.warning("SynthCLIPTaskPool sets `%s` itself; the configured value is ignored", key)
        super().__init__(
            DictConfig(test_datasets),
            classnames={t: table[t]["classnames"] for t in tasks},
            templates={t: table[t]["templates"] for t in tasks},
            clip_model=str(assets.pretrained),
            processor=str(assets.pretrained),
            **kwargs,
        )
        self.tasks, self.cache_dir, self.seed, self.build_if_missing = tasks, cache_dir, seed, build_if_missing
        self.split, self.corruption = split, corruption
