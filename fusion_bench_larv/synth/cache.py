"""The ``tinyclip_synth`` cache folder: its paths, its lock, and its upkeep before a build.

:class:`Assets` names the artefacts of ``<cache>/tinyclip_synth_seed<seed>/`` (see
:mod:`.build` for the layout) and holds the folder's build lock, an ``fcntl`` lock on
``<cache>/.tinyclip_synth_seed<seed>.lock`` that every writer of the folder holds
(:mod:`fusion_bench_larv.locks`: gone with its process, so a killed build never blocks the
next). Under that lock a build first calls :func:`repair`: half-written leftovers of killed
builds are removed, artefacts without a digest get one (:mod:`.digests`), damaged ones are
removed with a warning naming the file, and the build then makes whatever is missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..runs.locks import file_lock
from .digests import forget_artefact, record_artefact, verify

log = logging.getLogger("fusion_bench_larv.synth.build")  # one logger for the build's lines

# The generator's version: 2 gave every task its own image domain (tasks.add_frame), 3 captions
# the concepts of background, parity and orientation rarely (tasks._P_ATTRIBUTE), 4 has the
# recipe of the layer-wise work as its default and records the pretraining's thread count. A
# folder written by another version holds other images or weights than its recipe says today,
# or another default; it is refused.
MANIFEST_VERSION = 4
# cache folders said to be used unverified (read-only, without digests), once per process
_WARNED_UNVERIFIED: set = set()
#: artefacts that are files (the others are folders named like the artefact)
ARTEFACT_FILES = {"prompts": "prompts.json"}


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

    def path(self, artefact: str) -> Path:
        """Where artefact ``artefact`` (``prompts``, ``data/<task>``, ...) lies."""
        return self.root / ARTEFACT_FILES.get(artefact, artefact)

    def artefacts(self, tasks: Sequence[str], finetuned: bool = True) -> List[str]:
        """Artefact names (``prompts``, ``data/<task>``, ``pretrained``, ``finetuned/<task>``) of ``tasks``."""
        out = ["prompts", *(f"data/{t}" for t in tasks), "pretrained"]
        return out + [f"finetuned/{t}" for t in tasks] if finetuned else out

    def missing(self, tasks: Sequence[str], finetuned: bool = True) -> List[str]:
        """The artefacts of ``tasks`` not yet built, and ``data/<task>/val``: a validation split
        missing from a folder written before they existed. For a task of ``tasks.VAL_FROM_TEST``
        such a folder holds the former, larger test split, so the whole ``data/<task>`` is
        named (and redrawn)."""
        from .tasks import VAL_FROM_TEST

        out = []
        for artefact in self.artefacts(tasks, finetuned):
            if not self.path(artefact).exists():
                out.append(artefact)
            elif artefact.startswith("data/") and not (self.path(artefact) / "val").exists():
                out.append(artefact if artefact[len("data/"):] in VAL_FROM_TEST else f"{artefact}/val")
        return out

    @property
    def lock_file(self) -> Path:
        """``<cache>/.tinyclip_synth_seed<seed>.lock``, next to the folder (never deleted)."""
        return self.cache_dir / f".{self.root.name}.lock"

    def lock(self):
        """The build lock of this folder (``with assets.lock(): ...``; see :mod:`fusion_bench_larv.locks`):
        every writer of the folder holds it. Re-entrant within a process; a process that waits
        for another one's build says so."""
        return file_lock(self.lock_file, waiting=f"another process is building {self.root}")

    def read_manifest(self) -> Optional[dict]:
        try:
            return json.loads(self.manifest.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{self.manifest} cannot be read ({type(e).__name__}: {e}): it records the recipe and the "
                f"artefacts' digests, so the folder cannot be checked; delete {self.root} (it is rebuilt) "
                f"or use another --cache-dir"
            ) from e

    def check_version(self) -> None:
        """Raise if the folder was written by another version of the generator."""
        manifest = self.read_manifest()
        found = manifest.get("version") if manifest else MANIFEST_VERSION
        if found != MANIFEST_VERSION:
            raise ValueError(
                f"{self.root} was built by version {found} of the tinyclip_synth generator, this is "
                f"version {MANIFEST_VERSION} (other images, weights or default recipe); delete that folder or "
                f"use another cache (--cache-dir, modelpool.cache_dir or $FUSION_BENCH_LARV_CACHE)"
            )


def describe_artefacts(artefacts: Sequence[str]) -> str:
    """``["prompts", "data/a", "data/b", "finetuned/a"]`` → ``"prompts; data (2): a, b; finetuned (1): a"``."""
    groups: Dict[str, List[str]] = {}
    for artefact in artefacts:
        kind, _, task = artefact.partition("/")
        groups.setdefault(kind, [])
        if task:
            groups[kind].append(task)
    return "; ".join(f"{kind} ({len(names)}): {', '.join(names)}" if names else kind for kind, names in groups.items())


@contextlib.contextmanager
def writable_lock(assets: Assets):
    """Hold ``assets.lock()``; a cache folder that cannot be written is a clear error."""

    def unwritable(e: OSError) -> PermissionError:
        return PermissionError(
            f"cannot build the tinyclip_synth assets in {assets.root}: {assets.cache_dir} is not writable "
            f"({e}). Point FUSION_BENCH_LARV_CACHE (or modelpool.cache_dir / --cache-dir) at a folder you can "
            f"write, or have the cache's owner build it"
        )

    stack = contextlib.ExitStack()
    try:
        stack.enter_context(assets.lock())
    except OSError as e:
        raise unwritable(e) from e
    with stack:
        try:
            yield
        except PermissionError as e:  # the lock file was there to open, the folder is read-only
            cache = os.path.abspath(assets.cache_dir)
            if not e.filename or os.path.commonpath([cache, os.path.abspath(e.filename)]) != cache:
                raise
            raise unwritable(e) from e


def repair(assets: Assets, artefacts: Sequence[str]) -> None:
    """Under the lock, before a build: clear what killed builds left behind, record the digests
    of present ``artefacts`` that have none, and remove the damaged ones (one warning each,
    naming the file), so that the build makes them again."""
    remove_leftovers(assets)
    damaged, unrecorded = verify(assets, artefacts)
    record_unrecorded(assets, unrecorded)
    for name, problem in damaged.items():
        log.warning("tinyclip_synth: %s; rebuilding %s", problem, name)
        path = assets.path(name)
        aside = path.with_name(f".{path.name}.damaged.{os.getpid()}.tmp")
        os.replace(path, aside)
        forget_artefact(assets, name)
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()


def remove_leftovers(assets: Assets) -> None:
    """Remove the temporary files and folders (``.<name>...tmp``) of killed builds (lock held)."""
    if not assets.root.is_dir():
        return
    for folder, dirs, names in os.walk(assets.root):
        for name in [n for n in dirs + names if n.startswith(".") and n.endswith(".tmp")]:
            path = os.path.join(folder, name)
            log.debug("removing %s, left by an interrupted build", path)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        dirs[:] = [d for d in dirs if not d.startswith(".")]


def record_unrecorded(assets: Assets, unrecorded: Sequence[str]) -> None:
    """Record the digests of artefacts written without one (lock held): built before digests
    were kept, or by a build killed between an artefact's rename and its record."""
    if not unrecorded:
        return
    for name in unrecorded:
        record_artefact(assets, name)
    log.info("tinyclip_synth: recorded the digests of %s in %s (built without one); from now on a change to "
             "their files is caught", describe_artefacts(unrecorded), assets.manifest)


def record_if_writable(assets: Assets, unrecorded: Sequence[str]) -> None:
    """Record the missing digests of present artefacts; in a folder this process cannot write,
    say once that they are used unverified."""
    if not unrecorded:
        return
    try:
        with assets.lock():
            record_unrecorded(assets, verify(assets, unrecorded)[1])
    except OSError as e:
        if str(assets.root) not in _WARNED_UNVERIFIED:
            _WARNED_UNVERIFIED.add(str(assets.root))
            log.warning("tinyclip_synth: %s records no digest of %s and cannot be written (%s); they are used "
                        "unverified", assets.manifest, describe_artefacts(unrecorded), e)
