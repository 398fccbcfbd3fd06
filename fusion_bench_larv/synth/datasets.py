"""The synthetic suite's datasets and prompt table on disk: generated from the task registry
(:mod:`.tasks`), saved as ``datasets.Dataset`` folders (columns ``image``, ``label``), each
artefact written to a temporary sibling and renamed into place (:func:`..atomic.atomic_dir`),
its digest recorded in the manifest (:mod:`.digests`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Sequence

import numpy as np

from ..atomic import atomic_dir, atomic_write_json
from .cache import Assets
from .digests import record_artefact
from .domains import apply_domain
from .tasks import generate, prompts, suite_tasks

if TYPE_CHECKING:  # annotations only: build imports this module
    from .build import Recipe

log = logging.getLogger("fusion_bench_larv.synth.build")

__all__ = ["save_dataset", "load_split", "write_prompts", "generate_datasets"]


def save_dataset(images: np.ndarray, labels: np.ndarray, classnames: List[str], path: Path) -> None:
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


def load_split(assets: Assets, task: str, split: str):
    import datasets

    ds = datasets.load_from_disk(str(assets.data(task, split))).with_format("numpy")
    return np.asarray(ds["image"], dtype=np.uint8), np.asarray(ds["label"], dtype=np.int64)


def write_prompts(assets: Assets, recipe: Recipe, todo: Sequence[str]) -> None:
    if "prompts" in todo:
        start = time.perf_counter()
        table = {t: dict(zip(("classnames", "templates"), prompts(t))) for t in suite_tasks(recipe.suite)}
        atomic_write_json(assets.prompts, table, indent=2)
        record_artefact(assets, "prompts", time.perf_counter() - start)


def generate_datasets(assets: Assets, recipe: Recipe, tasks: Sequence[str], todo: Sequence[str]) -> None:
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
                images = apply_domain(images, task, recipe.task_grating, recipe.task_colour_mix)
                save_dataset(images, labels, classnames, tmp if only else tmp / split)
        # a split added to an older folder: the folder's digest is recorded again, with it
        record_artefact(assets, f"data/{task}", time.perf_counter() - start)
    if todo_data:
        log.info("generated %d dataset(s) in %.1f s", len(todo_data), time.perf_counter() - loop_start)
