"""Effective ranks of pretrained matrices, remembered across runs: exact by construction.

A pretrained matrix ``W0`` is the same in every merge of a pool, so its ``r_eff`` need be
computed only once. ``block_diagnostics`` reads and fills any mutable mapping keyed by
:func:`rank_cache_key` (parameter name, shape, a BLAKE2b digest of the weights, precision): a
changed weight changes the key, so a hit is always the right value. :class:`RankCache` is such a
mapping, kept in memory and optionally on disk (``rank_cache_dir``), one small JSON file per
matrix, written with :mod:`fusion_bench_larv.atomic`; :func:`process_rank_cache` is the
process-wide one that ``LARVAlgorithm`` uses (``rank_cache: true``).
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from typing import Dict, Iterator, MutableMapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .atomic import atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["tensor_fingerprint", "rank_cache_key", "RankCache", "process_rank_cache"]


def tensor_fingerprint(tensor: Tensor) -> str:
    """A content digest of a tensor: BLAKE2b (128 bit) of its dtype, shape and raw bytes.

    Exact (any changed element changes it, up to hash collisions) and cheap next to an
    eigendecomposition: one pass over the bytes (GPU tensors are copied to the CPU first).
    """
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{t.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(t.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def rank_cache_key(
    name: str, tensor: Tensor, dtype: torch.dtype = torch.float64
) -> Tuple[str, Tuple[int, ...], str, str]:
    """Key of ``block_diagnostics``' ``rank_cache``: (name, shape, content digest, precision)."""
    return (name, tuple(tensor.shape), tensor_fingerprint(tensor), str(dtype))


def _check_writable_dir(key: str, directory: str) -> None:
    """Create ``directory`` if needed and prove it writable (a probe file is created and
    removed); raise ``ValueError`` naming ``key`` otherwise."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{key} must be a folder, got {directory!r}, which is a file")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{key} {directory!r} is not a writable folder: {e}") from e


class RankCache(MutableMapping):
    """``rank_cache_key -> r_eff`` in memory, optionally persisted as one file per entry.

    With ``directory`` every new entry is also written to ``directory`` (atomically, with
    :func:`fusion_bench_larv.atomic.atomic_write_json`), and a miss in memory is looked up there,
    so concurrent jobs of a multirun sweep can share one folder safely: a reader sees a complete
    file or none, and two writers of one key write the same value.

    A file is trusted only if it passes every check on read: it parses, its stored key is the
    requested one (name, shape, weight digest, precision: a different key is a digest
    collision), its ``r_eff`` is finite and possible for the shape (``1 <= r_eff <= min(m, n)``,
    up to 1e-9 relative round-off, or exactly 0, the zero matrix's convention), and the SHA-256
    ``digest`` of its key and value matches (so an edited value is caught even when in range).
    A file that fails is a miss: the rank is recomputed and the file rewritten, with one warning
    naming the file.

    Raises:
        ValueError: ``directory`` is a file, cannot be created, or is not writable (the message
            names ``rank_cache_dir``, the key users set).
    """

    def __init__(self, directory: Union[str, os.PathLike, None] = None):
        self.directory = None if directory is None else os.fspath(directory)
        self._memory: Dict[tuple, float] = {}
        self._warned: set = set()
        if self.directory is not None:
            _check_writable_dir("rank_cache_dir", self.directory)

    @staticmethod
    def _key_record(key) -> list:
        return [key[0], list(key[1]), *key[2:]]

    @staticmethod
    def _entry_digest(key_record: list, r_eff: float) -> str:
        return hashlib.sha256(json.dumps([key_record, r_eff]).encode()).hexdigest()

    def _path(self, key) -> str:
        digest = hashlib.sha256(json.dumps(self._key_record(key)).encode()).hexdigest()[:40]
        return os.path.join(self.directory, f"{digest}.json")

    def _problem(self, record, key) -> Optional[str]:
        """Why the parsed file ``record`` is not a valid entry for ``key`` (None: it is)."""
        if not isinstance(record, dict) or not {"key", "r_eff", "digest"} <= record.keys():
            return "not a rank-cache entry (needs key, r_eff and digest)"
        if record["key"] != self._key_record(key):
            return f"its key {record['key']!r} is not the requested {self._key_record(key)!r}"
        r_eff = record["r_eff"]
        if isinstance(r_eff, bool) or not isinstance(r_eff, (int, float)) or not math.isfinite(r_eff):
            return f"r_eff {r_eff!r} is not a finite number"
        shape = tuple(key[1])
        bound = min(shape[-2:]) if len(shape) >= 2 else 1
        if r_eff != 0 and not (1 - 1e-9 <= r_eff <= bound * (1 + 1e-9)):
            return f"r_eff {r_eff!r} is impossible for shape {shape} (needs 1 <= r_eff <= {bound})"
        if record["digest"] != self._entry_digest(record["key"], float(r_eff)):
            return "its digest does not match its key and value"
        return None

    def __getitem__(self, key) -> float:
        if key in self._memory:
            return self._memory[key]
        if self.directory is not None:
            path = self._path(key)
            try:
                with open(path) as f:
                    record = json.load(f)
                problem = self._problem(record, key)
            except FileNotFoundError:
                raise KeyError(key) from None
            except (OSError, ValueError, TypeError) as e:
                problem = f"unreadable ({type(e).__name__}: {e})"
            if problem is None:
                self._memory[key] = float(record["r_eff"])
                return self._memory[key]
            if path not in self._warned:
                self._warned.add(path)
                log.warning("LARV rank cache: ignoring %s: %s; the rank is recomputed and the file "
                            "rewritten", path, problem)
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __setitem__(self, key, value: float) -> None:
        self._memory[key] = float(value)
        if self.directory is None:
            return
        record = self._key_record(key)
        atomic_write_json(self._path(key), {"key": record, "r_eff": float(value),
                                            "digest": self._entry_digest(record, float(value))},
                          durable=False)  # a torn or lost entry fails its checks: a miss

    def __delitem__(self, key) -> None:
        del self._memory[key]
        if self.directory is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path(key))

    def __iter__(self) -> Iterator:
        return iter(self._memory)

    def __len__(self) -> int:
        return len(self._memory)

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk are kept)."""
        self._memory.clear()


_PROCESS_CACHES: Dict[Optional[str], RankCache] = {}


def process_rank_cache(directory: Union[str, os.PathLike, None] = None) -> RankCache:
    """The process-wide ``RankCache`` (one per ``directory``; ``None``: memory only), so that
    repeated merges and sweeps in one process compute each pretrained rank once."""
    directory = None if directory is None else os.path.abspath(os.fspath(directory))
    if directory not in _PROCESS_CACHES:
        _PROCESS_CACHES[directory] = RankCache(directory)
    return _PROCESS_CACHES[directory]
