"""Advisory file locks (``fcntl.flock``): the one helper every writer of shared state locks with.

A lock is held on an open file, not by the file's existence, so the kernel drops it when its
process dies, however it dies (SIGKILL included): a killed writer never leaves a stale lock
behind, and no lock file is ever deleted (deleting one would let two processes lock two
different files of one name). The lock file holds the pid of the last holder, for the messages.

:func:`file_lock` waits for the lock (with one log line naming the holder, when it has to) and is
re-entrant within a process: a function that locks may call another that locks the same file.
:func:`try_file_lock` takes it or raises :class:`LockBusy` at once.

    from fusion_bench_larv.runs.locks import LockBusy, file_lock, try_file_lock
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

__all__ = ["LockBusy", "file_lock", "try_file_lock", "lock_holder"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


class LockBusy(RuntimeError):
    """Another process holds the lock (:func:`try_file_lock`); ``holder`` is its pid if known."""

    def __init__(self, path: Path, holder: Optional[int]):
        super().__init__(f"{path} is locked by another process" + (f" (pid {holder})" if holder else ""))
        self.path, self.holder = path, holder


# path -> [fd, depth]; the thread lock per path makes the flock re-entrant per process only
_HELD: Dict[str, List[int]] = {}
_THREAD_LOCKS: Dict[str, threading.RLock] = {}
_GUARD = threading.Lock()


def lock_holder(path: PathLike) -> Optional[int]:
    """The pid recorded in the lock file ``path`` (its last holder), or ``None``."""
    try:
        return int(Path(path).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # mode 0o666 minus the umask, like every file we write: others of the group may lock too
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except PermissionError:
        if not path.exists():
            raise
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # flock needs no write access


def _record_pid(fd: int) -> None:
    with contextlib.suppress(OSError):  # informative only (a read-only descriptor cannot write it)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)


@contextlib.contextmanager
def _locked(path: PathLike, blocking: bool, waiting: Optional[str]) -> Iterator[Path]:
    path = Path(os.path.abspath(os.fspath(path)))
    key = str(path)
    with _GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    with thread_lock:
        if key in _HELD:  # this process holds it already
            _HELD[key][1] += 1
        else:
            fd = _open(path)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = lock_holder(path)
                    if not blocking:
                        raise LockBusy(path, holder) from None
                    if waiting:
                        log.warning("%s (pid %s holds %s); waiting for it", waiting, holder or "?", path)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            _record_pid(fd)
            _HELD[key] = [fd, 1]
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                fd = _HELD.pop(key)[0]
                os.close(fd)  # closing the last descriptor releases the lock


def file_lock(path: PathLike, waiting: Optional[str] = None):
    """Hold an exclusive advisory lock on ``path`` for the ``with`` block, waiting for it.

    Args:
        path: the lock file (created with its folder if needed, never deleted).
        waiting: logged (WARNING, with the holder's pid) when another process holds the lock
            and this one has to wait; ``None`` waits silently.

    Raises:
        OSError: the lock file cannot be created or opened (e.g. a read-only folder).
    """
    return _locked(path, True, waiting)


def try_file_lock(path: PathLike):
    """Like :func:`file_lock`, but raise :class:`LockBusy` at once if another process holds it."""
    return _locked(path, False, None)
