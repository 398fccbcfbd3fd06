"""The weights shipped inside the package: seed 0's pretrained tiny CLIP and its 8-task towers.

Pretraining the tiny CLIP takes about 20 minutes on 2 cores and each fine-tuned tower about 40
seconds, so a first ``fusion_bench method=larv_iso_c modelpool=tinyclip_synth8`` would spend
half an hour building before it merges anything. The package therefore carries the outputs of
one build of the default recipe (seed 0): ``pretrained/`` and ``finetuned/<task>/`` of the first
8 tasks, with an ``index.json`` that records the generator version, the recipe and the SHA-256
of every file. ``build`` copies them into the cache when its seed, recipe and generator version
are the recorded ones (after checking every digest), and trains everything else itself; the
datasets are never shipped, they are generated.

Rebuild them from the seed with (:func:`.ship.ship` writes into this folder of the package)::

    python -m fusion_bench_larv.synth build --tasks 8 --from-scratch --jobs 2 --cache-dir <dir>
    python -m fusion_bench_larv.synth ship --half-deltas --cache-dir <dir>

A rebuild is bit-exact only on a machine like the one that made them (same CPU kind and
library versions); elsewhere it gives close but different weights, and ``ship`` reports which
files changed.

The towers are shipped as task vectors in float16 (``ship --half-deltas``,
``finetuned/<task>/model.delta-f16.safetensors``: fine-tuned minus pretrained, per tensor),
about half the bytes of a float32 tower, which keeps the package under its size budget.
Installing one adds the delta back to the shipped pretrained weights in float32 and writes the
tower's ``model.safetensors``; each weight then differs from the built tower by the rounding of
its task-vector entry to float16 (a relative 2^-11 of the entry, at most), far less than a task
vector itself. The index records the format per file (``"delta_of"``); ``ship`` without
``--half-deltas`` stores float32 towers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List, Optional, Union

from ..atomic import atomic_dir
from .digests import sha256_file
from .tasks import SUITES

SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
SHIPPED_SEED = 0
SHIPPED_TASKS = SUITES[8]
REBUILD_COMMAND = (
    "python -m fusion_bench_larv.synth build --tasks 8 --from-scratch --jobs 2 --cache-dir <dir> && "
    "python -m fusion_bench_larv.synth ship --half-deltas --cache-dir <dir>"
)
INDEX = "index.json"
WEIGHTS = "model.safetensors"
HALF_DELTA = "model.delta-f16.safetensors"


def shipped_dir(root: Union[str, Path, None] = None, seed: int = SHIPPED_SEED) -> Path:
    return Path(root or SHIPPED_ROOT) / f"tinyclip_synth_seed{seed}"


class ShippedAssets:
    """One shipped folder: its index, and the artefacts (``pretrained``, ``finetuned/<task>``)
    it holds. ``None`` from :meth:`find` when nothing is shipped for that seed."""

    def __init__(self, folder: Path, index: dict):
        self.folder = folder
        self.index = index
        self._verified = False

    @classmethod
    def find(cls, root: Union[str, Path, None] = None, seed: int = 0) -> Optional["ShippedAssets"]:
        folder = shipped_dir(root, seed)
        if not (folder / INDEX).exists():
            return None
        return cls(folder, json.loads((folder / INDEX).read_text()))

    @property
    def artefacts(self) -> List[str]:
        return sorted({name.rsplit("/", 1)[0] for name in self.index["files"]})

    def matches(self, version: int, recipe: dict) -> bool:
        """Whether these files are what a build of ``recipe`` by generator ``version`` makes here."""
        return self.index["version"] == version and self.index["recipe"] == recipe

    def holds_pretrained_of(self, pretrained: Path) -> bool:
        """Whether ``pretrained`` (a cache's folder) is this shipped pretrained model: the towers
        shipped with it were fine-tuned from it, and from nothing else."""
        record = self.index["files"].get("pretrained/model.safetensors")
        weights = Path(pretrained) / "model.safetensors"
        return record is not None and weights.is_file() and sha256_file(weights) == record["sha256"]

    def verify(self, artefact: Optional[str] = None) -> None:
        """Raise ``ValueError`` naming the first file that is missing or whose SHA-256 is not the
        recorded one (a damaged install, or a Git LFS pointer instead of the weights)."""
        for name, record in sorted(self.index["files"].items()):
            if artefact is not None and not name.startswith(artefact + "/"):
                continue
            path = self.folder / name
            if not path.is_file():
                raise ValueError(f"shipped tinyclip_synth file missing: {path}; reinstall the package or rebuild with: {REBUILD_COMMAND}")
            found = sha256_file(path)
            if found != record["sha256"]:
                raise ValueError(
                    f"shipped tinyclip_synth file {path} has SHA-256 {found}, the index records "
                    f"{record['sha256']}; reinstall the package or rebuild with: {REBUILD_COMMAND}"
                )

    def install(self, artefact: str, dest: Path) -> None:
        """Copy ``artefact`` to ``dest``, atomically. The first call checks every shipped file
        against its digest, before anything is copied: all or nothing."""
        if artefact not in self.artefacts:
            raise KeyError(f"{artefact!r} is not shipped; shipped: {self.artefacts}")
        if not self._verified:
            self.verify()
            self._verified = True
        with atomic_dir(dest) as tmp:
            for name, record in self.index["files"].items():
                if not name.startswith(artefact + "/"):
                    continue
                if "delta_of" in record:
                    add_half_delta(self.folder / record["delta_of"], self.folder / name, tmp / WEIGHTS)
                else:
                    shutil.copyfile(self.folder / name, tmp / name[len(artefact) + 1 :])


def _vision_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if k.startswith("vision_model.")}


def write_half_delta(pretrained: Path, tower: Path, out: Path) -> None:
    """Write ``tower``'s weights minus ``pretrained``'s (both ``model.safetensors``) in float16."""
    from safetensors.torch import load_file, save_file

    base = _vision_tensors(pretrained)
    weights = load_file(str(tower))
    if set(weights) - set(base):
        raise ValueError(f"{tower} has tensors the pretrained model {pretrained} lacks: {sorted(set(weights) - set(base))[:3]}")
    save_file({k: (v - base[k]).half() for k, v in weights.items()}, str(out), metadata={"format": "pt"})


def add_half_delta(pretrained: Path, delta: Path, out: Path) -> None:
    """Write the tower ``pretrained`` + ``delta`` (a :func:`write_half_delta` file), in float32."""
    from safetensors.torch import load_file, save_file

    base = _vision_tensors(pretrained)
    save_file({k: base[k] + v.float() for k, v in load_file(str(delta)).items()}, str(out), metadata={"format": "pt"})
