"""FusionBench's Flan-T5 GLUE text-generation task pool, with a safe cache and an average.

:class:`FlanT5GLUETaskPool` is FusionBench 0.2.33's
``fusion_bench.compat.taskpool.FlanT5GLUETextGenerationTaskPool`` (same prompts, tokenization,
generation and metrics: exact-match accuracy, Spearman's ρ for STS-B) with three changes:

- **Cache location.** FusionBench's config (``taskpool/flan-t5_glue_text_generation.yaml``) says
  ``cache_dir: outputs/cache``, a folder of the working directory. Ours takes FusionBench's
  ``${path.cache_dir}``, which the user controls (``$FUSION_BENCH_CACHE_DIR`` or ``path.cache_dir=``;
  by default ``<root>/outputs/cache``, root = ``$FUSION_BENCH_PROJECT_ROOT`` or the working directory).
- **Cache key.** FusionBench keys the tokenized data by task name alone
  (``<cache_dir>/flan-t5/_load_<task>_dataset_cached``), so a run with another tokenizer reads
  stale token ids. Ours stores ``<cache_dir>/fusion_bench_larv/flan-t5_glue/<task>/<tokenizer>-<digest>``;
  the digest covers the tokenizer's full serialisation (vocabulary, normaliser, special tokens),
  its ``model_max_length`` and FusionBench's version (which owns the prompt templates). It is
  written to a temporary folder and renamed, so concurrent jobs never read a half-written cache.
- **Average.** The report gets ``"average": {"score": ...}``: the mean over the tasks that have
  a finite score (accuracy; Spearman's ρ for STS-B), and ``"num_scored"``, how many did. STS-B's
  ρ is NaN when the predictions are constant (a weak merge); FusionBench reports NaN, and it
  stays NaN in the task's entry, but it is not averaged in. FusionBench's pool writes no average.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
from typing import Any, Dict, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion_bench.compat.taskpool.flan_t5_glue_text_generation import (
    CLASSIFICATION_TASKS,
    REGRESSION_TASKS,
    FlanT5GLUETextGenerationClassificationTask,
    FlanT5GLUETextGenerationRegressionTask,
    FlanT5GLUETextGenerationTaskPool,
)
from fusion_bench.tasks.flan_t5_text_generation.glue_load_dataset import _load_glue_dataset

from ..atomic import atomic_dir

log = logging.getLogger(__name__)

__all__ = ["FlanT5GLUETaskPool", "glue_average", "task_score", "tokenizer_digest"]

#: per-task metric, in the order they are looked for
SCORE_KEYS = ("accuracy", "spearman_rho")


def tokenizer_digest(tokenizer) -> str:
    """A short digest of everything in ``tokenizer`` that changes the token ids it produces."""
    from importlib.metadata import version

    backend = getattr(tokenizer, "backend_tokenizer", None)
    serial = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    parts = [type(tokenizer).__name__, serial, str(tokenizer.model_max_length), tokenizer.padding_side,
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str), version("fusion-bench")]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def task_score(result: Any) -> Optional[float]:
    """A task entry's score (accuracy, else Spearman's ρ); None if it has none or it is not finite."""
    if not isinstance(result, dict):
        return None
    for key in SCORE_KEYS:
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) else None
    return None


def glue_average(report: Dict[str, Any], tasks: Sequence[str]) -> Dict[str, Any]:
    """``{"score": mean over ``tasks`` with a finite score, "num_scored": how many}`` (score NaN if none)."""
    scores = [task_score(report.get(t)) for t in tasks]
    finite = [s for s in scores if s is not None]
    unscored = [t for t, s in zip(tasks, scores) if s is None]
    if unscored:
        log.warning("GLUE: no finite score for %s (left out of the average)", ", ".join(unscored))
    return {"score": sum(finite) / len(finite) if finite else float("nan"), "num_scored": len(finite)}


class _CachedGLUEDataset:
    """Task mixin: the tokenized data set comes from the pool's tokenizer-keyed cache."""

    @functools.cached_property
    def dataset(self):
        return self.taskpool.load_glue(self.config.dataset.name)


class _ClassificationTask(_CachedGLUEDataset, FlanT5GLUETextGenerationClassificationTask):
    pass


class _RegressionTask(_CachedGLUEDataset, FlanT5GLUETextGenerationRegressionTask):
    pass


class FlanT5GLUETaskPool(FlanT5GLUETextGenerationTaskPool):
    """FusionBench's Flan-T5 GLUE task pool (see the module docstring for what differs).

    Args:
        tasks: ``[{name: <task>, dataset: {name: <glue config>, split: <split>}}, ...]``, as in
            FusionBench's config; ``name`` is a GLUE task (``cola``, ..., ``stsb``, or ``glue-<task>``).
        tokenizer: Tokenizer name or path (``AutoTokenizer.from_pretrained``).
        cache_dir: Folder of the tokenized data sets (``${path.cache_dir}``); ``null``: no cache.
        batch_size, num_workers, fast_dev_run: As in FusionBench.
    """

    def __init__(
        self,
        tasks: Sequence[Any],
        tokenizer: str,
        cache_dir: Optional[str] = None,
        batch_size: int = 32,
        num_workers: int = 0,
        fast_dev_run: bool = False,
        name: str = "flan-t5_glue_text_generation",
        **kwargs,
    ):
        if isinstance(tasks, (DictConfig, ListConfig)):
            tasks = OmegaConf.to_container(tasks, resolve=True)
        if not isinstance(tasks, (list, tuple)) or not tasks:
            raise ValueError(f"`tasks` must be a non-empty list of {{name, dataset}} entries, got {tasks!r}")
        known = CLASSIFICATION_TASKS + REGRESSION_TASKS
        for task in tasks:
            if not isinstance(task, dict) or "name" not in task or not isinstance(task.get("dataset"), dict):
                raise ValueError(f"`tasks`: each entry needs `name` and `dataset: {{name, split}}`, got {task!r}")
            if task["name"] not in known:
                raise ValueError(f"`tasks`: unknown GLUE task {task['name']!r}; expected one of {known}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        config = dict(name=name, tasks=list(tasks), tokenizer=tokenizer, cache_dir=cache_dir, batch_size=batch_size,
                      num_workers=num_workers, fast_dev_run=fast_dev_run, **kwargs)
        super().__init__(OmegaConf.create(config))

    def load_task(self, task_name_or_config):
        task = super().load_task(task_name_or_config)
        cls = _RegressionTask if task.config.name in REGRESSION_TASKS else _ClassificationTask
        out = cls(task.config)
        out._taskpool = self
        return out

    def cache_path(self, glue_name: str) -> Optional[str]:
        """Where the tokenized ``glue_name`` lives for this tokenizer (None: no cache)."""
        if self.config.cache_dir is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(self.config.tokenizer)).strip("_")[-60:]
        return os.path.join(str(self.config.cache_dir), "fusion_bench_larv", "flan-t5_glue", glue_name,
                            f"{slug}-{tokenizer_digest(self.tokenizer)}")

    def load_glue(self, glue_name: str):
        """FusionBench's tokenized GLUE ``DatasetDict`` for ``glue_name``, through the cache."""
        from datasets import load_from_disk

        path = self.cache_path(glue_name)
        if path is None:
            return _load_glue_dataset(glue_name, self.tokenizer)
        if os.path.isdir(path):
            log.info("GLUE %s: reading the tokenized data from %s", glue_name, path)
            return load_from_disk(path)
        dataset = _load_glue_dataset(glue_name, self.tokenizer)
        with atomic_dir(path, exist_ok=True) as tmp:  # another job may have finished first
            dataset.save_to_disk(str(tmp))
        log.info("GLUE %s: tokenized data cached at %s", glue_name, path)
        return load_from_disk(path)

    def evaluate(self, model, name: str = None) -> Dict[str, Any]:
        report = super().evaluate(model, name=name)
        report["average"] = glue_average(report, self.task_names)
        return report
