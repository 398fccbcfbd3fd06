"""Corrupted test splits in the ``tinyclip_synth`` cache: generated on first use, never shipped, checked.

Layout under ``<cache dir>/tinyclip_synth_seed<seed>/`` (next to ``data/``, see
:mod:`fusion_bench_larv.synth.build`)::

    corrupted/<task>/<corruption>/   datasets.Dataset.save_to_disk (image / label, like data/<task>/test)
                                     + corruption.json (what it was made from, and digests)

A corrupted split is the cached clean test split of ``<task>`` with every image corrupted by
:func:`fusion_bench_larv.synth.corruptions.corrupt` at its fixed severity, drawing from its own
random stream ``(seed, task, "test/<corruption>")`` (``tasks.task_seed``): the same bytes on
every machine with the same numpy and Pillow. Each split is written to a temporary sibling and
renamed into place (:func:`fusion_bench_larv.atomic.atomic_dir`); two processes building the same
split keep the first.

``corruption.json`` records the generator version (:data:`VERSION`), the corruption and its
severity, the seed, and SHA-256 digests of the clean source (images and labels) and of the
corrupted split. Every use checks all of them (:func:`check`): a split made at another severity
or version, from another clean split, or whose data no longer match its digest is refused with
the folder to delete; it is regenerated on the next use. The suite's ``build_if_missing`` governs
the trained assets; these splits are derived data (a second or so per task) and are always
generated when missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_dir, atomic_write_json
from .corruptions import CORRUPTIONS, SEVERITY, corrupt
from .tasks import prompts, task_seed

log = logging.getLogger(__name__)

__all__ = ["ROBUSTNESS_TASKS", "CLEAN", "VERSION", "RECORD", "corrupted_dir", "build_split", "check", "ensure_corrupted"]

#: the robustness pool's tasks (config/modelpool/tinyclip_synth8_robustness.yaml), analogues of
#: FusionBench's Cars, EuroSAT, RESISC45 and GTSRB (docs/benchmark.md, "Corrupted test splits")
ROBUSTNESS_TASKS = ("shapes", "textures", "position", "arrows")
#: the name of the uncorrupted test split in the robustness pools (``+corruption=clean``)
CLEAN = "clean"
#: version of the corruption code; bump it when a corruption's output changes
VERSION = 1
#: the record written inside every corrupted split
RECORD = "corruption.json"


def corrupted_dir(assets, task: str, corruption: str) -> Path:
    """``<root>/corrupted/<task>/<corruption>`` of an :class:`~fusion_bench_larv.synth.build.Assets`."""
    return assets.root / "corrupted" / task / corruption


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr((images.shape, str(images.dtype), labels.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _expected(assets, task: str, corruption: str, source_sha256: str) -> dict:
    return {"version": VERSION, "task": task, "corruption": corruption, "severity": dict(SEVERITY[corruption]),
            "seed": assets.seed, "source_sha256": source_sha256}


def _load(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    import datasets

    ds = datasets.load_from_disk(str(path)).with_format("numpy")
    return np.asarray(ds["image"], dtype=np.uint8), np.asarray(ds["label"], dtype=np.int64)


def build_split(assets, task: str, corruption: str) -> Path:
    """Generate ``corrupted/<task>/<corruption>`` from the cached clean test split."""
    from .datasets import save_dataset

    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption: expected one of {list(CORRUPTIONS)}, got {corruption!r}")
    images, labels = _load(assets.data(task, "test"))
    rng = np.random.default_rng(task_seed(assets.seed, task, f"test/{corruption}"))
    corrupted = corrupt(images, corruption, rng)
    path = corrupted_dir(assets, task, corruption)
    record = _expected(assets, task, corruption, _digest(images, labels)) | {"sha256": _digest(corrupted, labels)}
    with atomic_dir(path, exist_ok=True) as tmp:
        save_dataset(corrupted, labels, prompts(task)[0], tmp)
        atomic_write_json(tmp / RECORD, record, indent=2)
    return path


def check(assets, task: str, corruption: str) -> None:
    """Raise ``ValueError`` unless ``corrupted/<task>/<corruption>`` is what this code makes from
    the cached clean test split (severity, version, seed, source digest, data digest)."""
    path = corrupted_dir(assets, task, corruption)
    try:
        record = json.loads((path / RECORD).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable {RECORD} ({e}); delete that folder, it is regenerated on next use") from e
    images, labels = _load(assets.data(task, "test"))
    expected = _expected(assets, task, corruption, _digest(images, labels))
    diff = {k: (record.get(k), v) for k, v in expected.items() if record.get(k) != v}
    if not diff:
        stored = _digest(*_load(path))
        if stored != record.get("sha256"):
            diff = {"sha256": (record.get("sha256"), stored)}
    if diff:
        raise ValueError(
            f"{path} is not the {corruption} split this version makes from {assets.data(task, 'test')} "
            f"(recorded, expected): {diff}; delete that folder, it is regenerated on next use"
        )


def ensure_corrupted(assets, tasks: Sequence[str], corruption: str) -> Dict[str, Path]:
    """``{task: folder}`` of the ``corruption`` test splits of ``tasks``, generating the missing
    ones (the clean test splits must be in the cache) and checking every one."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption: expected {CLEAN!r} or one of {list(CORRUPTIONS)}, got {corruption!r}")
    out: Dict[str, Path] = {}
    built = []
    for task in tasks:
        path = corrupted_dir(assets, task, corruption)
        if not path.exists():
            build_split(assets, task, corruption)
            built.append(task)
        check(assets, task, corruption)
        out[task] = path
    if built:
        log.info("generated the %s test split of %s in %s", corruption, ", ".join(built), assets.root / "corrupted")
    return out


def normalize(corruption: Optional[str]) -> Optional[str]:
    """``None`` for the clean split (``None`` or ``"clean"``), else the corruption's name."""
    return None if corruption in (None, CLEAN) else str(corruption)
