"""Digests of the cache's artefacts: recorded in the manifest when written, verified before use.

An artefact is a file (``prompts.json``) or a folder (``data/<task>``, ``pretrained``,
``finetuned/<task>``, and whatever other writers add). Its record in ``manifest.json`` is::

    "digests": {"<artefact>": {"sha256": "<digest of the files>", "bytes": <total>,
                               "files": {"<relative path>": "<SHA-256 of the file>", ...}}}

with every file the artefact holds when it is recorded, whatever they are. The artefact's own
``sha256`` is the SHA-256 of the sorted ``"<relative path>\\0<file SHA-256>\\n"`` lines. Left
out of a folder: hidden entries (``.<name>...tmp``, the temporary writes of :mod:`..atomic`)
and sub-folders that are artefacts of their own (an artefact written into an older one later,
such as a split added to ``data/<task>``).

Every writer calls :func:`record_artefact` right after its artefact is in place, holding the
cache's lock (``Assets.lock()``). :func:`verify` compares the files on disk with the records;
an artefact that matched once is not hashed again in this process (memoised per cache root,
artefact and digest).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set, Tuple

from ..atomic import atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    from .cache import Assets

log = logging.getLogger(__name__)

__all__ = ["sha256_file", "artefact_files", "artefact_record", "record_artefact", "forget_artefact", "verify"]

# (cache root, artefact, artefact sha256) that matched their files in this process
_VERIFIED: Set[Tuple[str, str, str]] = set()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artefact_files(path: Path, skip: Iterable[Path] = ()) -> Dict[str, str]:
    """``{relative path: SHA-256}`` of the files of the artefact at ``path`` (a file: its name).

    Raises ``FileNotFoundError`` if ``path`` does not exist."""
    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    if not path.is_dir():
        raise FileNotFoundError(path)
    skip = {os.path.normpath(p) for p in skip}
    files = {}
    for folder, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".") and os.path.join(folder, d) not in skip]
        for name in names:
            if not name.startswith("."):
                full = os.path.join(folder, name)
                files[Path(os.path.relpath(full, path)).as_posix()] = sha256_file(Path(full))
    return dict(sorted(files.items()))


def _combined(files: Dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}\0{sha}\n" for name, sha in sorted(files.items())).encode()).hexdigest()


def artefact_record(path: Path, skip: Iterable[Path] = ()) -> dict:
    """The manifest record of the artefact at ``path`` (see the module docstring)."""
    files = artefact_files(path, skip)
    size = sum((Path(path) / name if Path(path).is_dir() else Path(path)).stat().st_size for name in files)
    return {"sha256": _combined(files), "bytes": size, "files": files}


def _nested(assets: "Assets", name: str, digests: dict) -> List[Path]:
    return [assets.path(other) for other in digests if other.startswith(name + "/")]


def record_artefact(assets: "Assets", name: str, seconds: Optional[float] = None, **fields) -> dict:
    """Record artefact ``name``'s digest (and its build ``seconds``, and other top-level manifest
    ``fields``) in the manifest; call it right after writing the artefact. Takes the cache's
    lock (re-entrant: callers that hold it already, like a build, may call it)."""
    with assets.lock():
        manifest = assets.read_manifest()
        if manifest is None:
            raise FileNotFoundError(f"{assets.manifest} does not exist: a build writes it first")
        digests = manifest.setdefault("digests", {})
        digests[name] = artefact_record(assets.path(name), _nested(assets, name, digests))
        if seconds is not None:
            manifest.setdefault("timings_s", {})[name] = round(seconds, 1)
        manifest.update(fields)
        atomic_write_json(assets.manifest, manifest, indent=2)
    _VERIFIED.add((str(assets.root), name, digests[name]["sha256"]))
    return digests[name]


def forget_artefact(assets: "Assets", name: str) -> None:
    """Drop the records of ``name`` and of the artefacts inside it (it is about to be rebuilt)."""
    with assets.lock():
        manifest = assets.read_manifest()
        digests = (manifest or {}).get("digests", {})
        gone = [n for n in digests if n == name or n.startswith(name + "/")]
        if gone:
            for n in gone:
                del digests[n]
            atomic_write_json(assets.manifest, manifest, indent=2)


def _problem(assets: "Assets", name: str, record: dict, found: Dict[str, str]) -> Optional[str]:
    """What differs between the recorded files and ``found`` (``None``: nothing), naming a file."""
    where = assets.path(name)
    base = where if where.is_dir() else where.parent
    recorded = record.get("files", {})
    for file, sha in recorded.items():
        if file not in found:
            return f"{base / file} is missing from {name}"
        if found[file] != sha:
            return f"{base / file} does not match the SHA-256 recorded when {name} was built (a damaged file)"
    extra = sorted(set(found) - set(recorded))
    if extra:
        return f"{base / extra[0]} was not in {name} when it was built (an unexpected file)"
    return None


def verify(assets: "Assets", artefacts: Iterable[str]) -> Tuple[Dict[str, str], List[str]]:
    """Check present ``artefacts`` against their records.

    Returns ``(damaged, unrecorded)``: ``{artefact: what is wrong, naming the file}`` and the
    artefacts without a record (built before digests were kept, or killed between their
    rename and their record). Absent artefacts are neither (``Assets.missing`` lists them).
    """
    manifest = assets.read_manifest() or {}
    digests = manifest.get("digests", {})
    damaged: Dict[str, str] = {}
    unrecorded: List[str] = []
    for name in artefacts:
        path = assets.path(name)
        if not path.exists():
            continue
        record = digests.get(name)
        if record is None:
            unrecorded.append(name)
            continue
        key = (str(assets.root), name, record.get("sha256"))
        if key in _VERIFIED:
            continue
        try:
            found = artefact_files(path, _nested(assets, name, digests))
        except OSError as e:
            damaged[name] = f"{path} cannot be read ({e})"
            continue
        problem = _problem(assets, name, record, found)
        if problem is None:
            _VERIFIED.add(key)
        else:
            damaged[name] = problem
    return damaged, unrecorded
