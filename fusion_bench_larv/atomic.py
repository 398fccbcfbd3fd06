"""Atomic file writes: the one helper every file LARV writes goes through.

A file is written to a temporary name in its destination folder, flushed to disk and renamed
over the destination (``os.replace``, atomic on POSIX), so a reader sees the old file, the
new one, or none, never a half-written one, and a crash leaves at most a hidden ``.<name>.*.tmp``
file. :func:`atomic_dir` does the same for a folder written by another library (a data set's
``save_to_disk``). The temporary file is created with mode ``0o666`` minus the process umask, like a plain
``open(path, "w")`` (and so like FusionBench's own reports: 0644 under the usual umask 022),
not with ``tempfile.mkstemp``'s private 0600; the temporary folder with ``0o777`` minus the
umask, like ``mkdir`` (0755 under umask 022, 0775 under 002 for a group's shared cache), not
with ``tempfile.mkdtemp``'s private 0700, and so are the files and folders written into it.

    from fusion_bench_larv.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write_bytes(path: PathLike, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; its parent folder is created. Returns the path.

    ``durable=False`` skips the ``fsync`` before the rename: the write is still atomic for other
    processes, but a power loss may lose it (fine for caches whose entries are checked on read).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask, as for open(..., "w")
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8", durable: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding), durable=durable)


def atomic_write_json(path: PathLike, obj: Any, durable: bool = True, **dump_kwargs: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; ``dump_kwargs`` go to :func:`json.dumps`."""
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs), durable=durable)


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (racy only against another thread's umask)
    os.umask(mask)
    return mask


def _follow_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the mode a plain ``open``/``mkdir`` gives
    (libraries differ: safetensors writes its files 0600)."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for name, mode in [(d, 0o777) for d in dirs] + [(f, 0o666) for f in files]:
            full = os.path.join(root, name)
            if not os.path.islink(full) and os.stat(full).st_mode & 0o777 != mode & ~mask:
                os.chmod(full, mode & ~mask)


@contextlib.contextmanager
def atomic_dir(path: PathLike, exist_ok: bool = False, replace: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder next to ``path``; it is renamed to ``path`` when the block
    succeeds and removed in any case. Before the rename, every file and folder in it gets the
    mode a plain ``open``/``mkdir`` gives under the process umask, whatever wrote it.

    With ``exist_ok`` a folder that another process put at ``path`` meanwhile is kept (the rename
    fails and this one is dropped); otherwise that failure is raised. With ``replace`` a folder
    already at ``path`` when the block succeeds is swapped out: renamed to a hidden
    ``.<name>.*.old.tmp`` sibling just before the new one is renamed in, then removed, so
    ``path`` holds the old folder or the new one, never a mix (a crash between the two renames
    leaves no folder at ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.mkdir(tmp, 0o777)  # the kernel applies the umask, as for a plain mkdir
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    old = None
    try:
        yield tmp
        _follow_umask(tmp)
        if replace and path.is_dir():
            old = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.old.tmp"
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:  # put the old folder back rather than leave none
                os.replace(old, path)
                old = None
            if not (exist_ok and path.is_dir()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
