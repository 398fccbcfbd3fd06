"""LARV's per-block weight diagnostics: effective-rank contrast, commutator coefficient, score.

LARV (Wang, Deng, Dou, Bi, Lu, "Layer-wise Adaptive Rescaling Veneer", arXiv 2602.09413) scores
every transformer block ``l = 0..L-1`` from the weights alone. With ``W0`` a pretrained matrix and
``D`` its update (the merged update, or one task vector), this module computes, in float64:

1. Effective rank (Roy & Vetterli, 2007) of an ``m x n`` matrix ``A`` with singular values
   ``sigma_j``::

       p_j = sigma_j^2 / sum_k sigma_k^2,   H(A) = -sum_j p_j ln p_j  (0 ln 0 = 0),
       r_eff(A) = exp(H(A)),                1 <= r_eff(A) <= min(m, n).

   Exact: ``sigma_j^2`` are the eigenvalues (``eigvalsh``, clamped at 0) of the Gram matrix on
   the smaller side. Convention (ours): the zero matrix has no spectrum and gets ``r_eff = 0``.
2. Effective-rank contrast ("information richness")::

       e = r_eff(W0) / (r_eff(D) + eps),    eps = 1e-8.

3. Commutator coefficient ("conflict level")::

       c = 1/2 (||W0 D^T - D W0^T||_F + ||W0^T D - D^T W0||_F) / (||W0||_F ||D||_F + eps).

   The large side's product is never formed. Orient ``A`` (m x n) so that ``n <= m``; with the
   Gram matrices ``G_A = A^T A``, ``G_D = D^T D`` and ``X = A^T D`` (all n x n)::

       ||A D^T - D A^T||_F^2 = 2 tr(G_A G_D) - 2 tr(X^2),
       ||A^T D - D^T A||_F^2 = 2 ||X||_F^2   - 2 tr(X^2),
       ||A||_F^2 = tr(G_A),  ||D||_F^2 = tr(G_D),

   each square clamped at 0 before the root. ``c`` is symmetric under transposing both
   matrices, so the orientation does not change it.
4. Standardisation across blocks: ``z_l = (c_l - mean c) / std c`` (population std), ``z = 0``
   when ``std < 1e-12``.
5. Composite score::

       s_l = e_l^eta * ((l + 1) / L)^rho / (1 + softplus(z_l)),   eta = 1, rho = 0.5 (ours).

Block values are unweighted means over the block's diagnostic matrices (2-D floating-point
weights with both sides > 1, see ``blocks.diagnostic_keys``), then means over the update sources
(one merged update, or the ``T`` task vectors). Choices that are ours, not the paper's:

* a matrix whose update is exactly zero is left out of its block's mean (its ``e`` would be
  ``r_eff(W0) / eps``); a source that is zero on the whole block is left out of the mean over
  sources; a block whose update is zero for every matrix and every source is ``zero_update``:
  ``e = c = NaN``, no score, left out of standardisation and gating (it gets ``lambda = 1``);
* ``conflict="pairwise"`` replaces ``(W0, D)`` with every pair of task vectors ``(tau_i, tau_j)``
  and averages over the ``T(T-1)/2`` pairs. A matrix is left out of a pair's mean only when both
  task vectors are zero on it; when exactly one is zero the formula gives ``c = 0`` (no overlap,
  no conflict); a block that no task vector touches has ``c = 0``.

Performance (docs/performance.md): only ``n x n`` products are formed; each Gram matrix is
computed once, written straight into a preallocated batch buffer per size (at most
``chunk_bytes``) and shared between ``r_eff`` and the commutator; each full buffer is solved by
one batched ``torch.linalg.eigvalsh`` on ``device`` if given (on CPU split over
``torch.get_num_threads()`` OS threads with one BLAS thread each: same routine, same results).
Pretrained ranks can be memoised across runs with ``rank_cache`` keyed by ``rank_cache_key``
(``process_rank_cache`` is the process-wide one; ``RankCache(directory)`` also persists it).
``dtype=torch.float64`` is the exact path (``rank_method: exact``). ``dtype=torch.float32`` is
the approximate mode (``rank_method: approximate``): its ``r_eff`` error against float64 is
measured in ``tests/test_diagnostics.py`` and docs/performance.md; it stays below 1e-6 relative
on full-rank matrices but not on exactly rank-deficient updates (up to ~6e-5 measured), which is why
it is not the default.
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from typing import (Dict, Iterator, List, Mapping, MutableMapping, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import threadpoolctl
import torch
import torch.nn.functional as F
from torch import Tensor

from .atomic import atomic_write_json
from .blocks import BlockLayout, diagnostic_keys

log = logging.getLogger(__name__)

__all__ = [
    "effective_rank",
    "rank_contrast",
    "commutator_coefficient",
    "standardize",
    "composite_score",
    "BlockDiagnostics",
    "block_diagnostics",
    "tensor_fingerprint",
    "rank_cache_key",
    "RankCache",
    "process_rank_cache",
    "RANK_METHODS",
    "rank_method_dtype",
    "CPU_LINALG",
]

STD_FLOOR = 1e-12
DEFAULT_CHUNK_BYTES = 64 * 2**20
#: ``exact``: float64 Gram matrices, eigenvalues and commutator products (the reference);
#: ``approximate``: the same computation in float32 (measured error in docs/performance.md).
RANK_METHODS: Tuple[str, ...] = ("exact", "approximate")
#: CPU linear algebra of the diagnostics. ``numpy``: Gram products and eigenvalues through
#: numpy (``matmul``, ``linalg.eigvalsh``: its bundled OpenBLAS and LAPACK); ``torch``:
#: ``torch.matmul`` and ``torch.linalg.eigvalsh`` (torch's own BLAS/LAPACK, MKL in PyPI's x86
#: wheels). Same arithmetic in the same precision, results equal to round-off (tests: 1e-12).
#: On the 2-core AMD EPYC machine of docs/performance.md, numpy was 1.4x faster at 1 thread and
#: 1.3x at 2 threads on ViT-B/32 (MKL's float64 GEMM ran at half speed there). Other devices use
#: torch.
CPU_LINALG: Tuple[str, ...] = ("numpy", "torch")


# ---------------------------------------------------------------------------------------------
# Matrix-level math
# ---------------------------------------------------------------------------------------------


def _check_matrices(a: Tensor, name: str) -> None:
    if not isinstance(a, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (..., m, n), got {tuple(a.shape)}")


def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")


def _check_eps(eps: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def _orient(a: Tensor) -> Tensor:
    """Transpose ``(..., m, n)`` so that the last side is the smaller one."""
    return a if a.shape[-2] >= a.shape[-1] else a.mT


def _rank_from_eigvals(eigvals: Tensor) -> Tensor:
    """``exp`` of the entropy of the normalised spectrum ``(..., n)`` -> ``(...)``; 0 if empty."""
    eigvals = eigvals.clamp_min(0)
    total = eigvals.sum(-1, keepdim=True)
    has_spectrum = total > 0
    p = eigvals / torch.where(has_spectrum, total, torch.ones_like(total))
    ranks = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return torch.where(has_spectrum.squeeze(-1), ranks, torch.zeros_like(ranks))


def _commutator_from_grams(ga: Tensor, gd: Tensor, x: Tensor, eps: float) -> Tensor:
    """``c`` from ``G_A = A^T A``, ``G_D = D^T D`` and ``X = A^T D`` (each ``(..., n, n)``)."""
    tr_x2 = (x * x.mT).sum((-2, -1))
    sq_left = 2 * (ga * gd).sum((-2, -1)) - 2 * tr_x2
    sq_right = 2 * (x * x).sum((-2, -1)) - 2 * tr_x2
    norm_a2 = ga.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0)
    norm_d2 = gd.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0)
    numerator = 0.5 * (sq_left.clamp_min(0).sqrt() + sq_right.clamp_min(0).sqrt())
    return numerator / ((norm_a2 * norm_d2).sqrt() + eps)


def effective_rank(a: Tensor, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Effective rank ``exp(H(p))``, ``p_j = sigma_j^2 / sum sigma^2`` (Roy & Vetterli, 2007).

    Args:
        a: matrices of shape ``(..., m, n)``.
        dtype: computation precision (float64 is the reference).

    Returns:
        ``(...)`` ranks in ``dtype``, ``1 <= r_eff <= min(m, n)``; 0 for a zero matrix.
    """
    _check_matrices(a, "a")
    _check_dtype(dtype)
    oriented = _orient(a.to(dtype))
    return _rank_from_eigvals(torch.linalg.eigvalsh(oriented.mT @ oriented))


def rank_contrast(w0: Tensor, d: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Effective-rank contrast ``e = r_eff(W0) / (r_eff(D) + eps)``, batched over ``(...)``.

    Args:
        w0: pretrained matrices ``(..., m, n)``.
        d: update matrices of the same shape.
        eps: guard of the denominator.

    Returns:
        ``(...)`` float64 contrasts.
    """
    _check_matrices(w0, "w0")
    _check_matrices(d, "d")
    _check_eps(eps)
    return effective_rank(w0) / (effective_rank(d) + eps)


def commutator_coefficient(a: Tensor, d: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Commutator coefficient of ``(A, D)``, batched; see the module docstring for the formula.

    Only ``n x n`` products on the smaller side are formed (``A^T A``, ``D^T D``, ``A^T D``).

    Args:
        a: matrices ``(..., m, n)`` (``W0``, or ``tau_i`` for the pairwise conflict).
        d: matrices of the same shape (``D``, or ``tau_j``).
        eps: guard of the denominator.

    Returns:
        ``(...)`` float64 coefficients ``>= 0``: 0 when ``A D^T`` and ``A^T D`` are symmetric
        (e.g. commuting symmetric matrices) or when either side is zero; at most 2 (``sqrt 2``
        for a rotation by 90 degrees against the identity).
    """
    _check_matrices(a, "a")
    _check_matrices(d, "d")
    _check_eps(eps)
    if a.shape[-2:] != d.shape[-2:]:
        raise ValueError(f"a and d must have the same matrix shape, got {tuple(a.shape)} and "
                         f"{tuple(d.shape)}")
    a = _orient(a.to(torch.float64))
    d = _orient(d.to(torch.float64))
    return _commutator_from_grams(a.mT @ a, d.mT @ d, a.mT @ d, eps)


# ---------------------------------------------------------------------------------------------
# Block-level scores
# ---------------------------------------------------------------------------------------------


def _valid_mask(values: Tensor, valid: Optional[Tensor], name: str) -> Tensor:
    if valid is None:
        return torch.isfinite(values)
    valid = torch.as_tensor(valid, device=values.device)
    if valid.dtype != torch.bool or valid.shape != values.shape:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(values.shape)} like "
                         f"{name}, got {valid.dtype} {tuple(valid.shape)}")
    return valid


def standardize(c: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """``z = (c - mean c) / std c`` over the valid blocks (population std).

    Args:
        c: ``(L,)`` commutator coefficients.
        valid: ``(L,)`` bool mask of the blocks that take part; default: the finite entries.

    Returns:
        ``(L,)`` float64; ``z = 0`` for every valid block when ``std < 1e-12``; NaN for invalid
        blocks (so that a missing value can never pass for an average one).
    """
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.ndim != 1:
        raise ValueError(f"c must be a 1-D tensor, got shape {tuple(c.shape)}")
    valid = _valid_mask(c, valid, "c")
    z = torch.full_like(c, math.nan)
    if not bool(valid.any()):
        return z
    values = c[valid]
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"c must be finite on the valid blocks, got {c.tolist()}")
    std = values.std(correction=0)
    if float(std) < STD_FLOOR:
        z[valid] = 0.0
    else:
        z[valid] = (values - values.mean()) / std
    return z


def composite_score(
    e: Tensor,
    z: Tensor,
    *,
    eta: float = 1.0,
    rho: float = 0.5,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """``s_l = e_l^eta * ((l + 1) / L)^rho / (1 + softplus(z_l))``, ``L = len(e)``.

    ``L`` counts every block, zero-update ones included, so the depth prior of a block does not
    depend on which other blocks were updated.

    Args:
        e: ``(L,)`` effective-rank contrasts.
        z: ``(L,)`` standardised commutator coefficients.
        eta: exponent of ``e`` (default 1: ours).
        rho: exponent of the depth prior (default 0.5: ours; 0 removes the prior).
        valid: ``(L,)`` bool mask; default: blocks where both ``e`` and ``z`` are finite.

    Returns:
        ``(L,)`` float64 scores, NaN for invalid blocks.
    """
    e = torch.as_tensor(e, dtype=torch.float64)
    z = torch.as_tensor(z, dtype=torch.float64)
    if e.ndim != 1 or e.shape != z.shape:
        raise ValueError(f"e and z must be 1-D of the same length, got {tuple(e.shape)} and "
                         f"{tuple(z.shape)}")
    for name, value in (("eta", eta), ("rho", rho)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if valid is None:
        valid = torch.isfinite(e) & torch.isfinite(z)
    else:
        valid = _valid_mask(e, valid, "e")
    num_blocks = e.shape[0]
    depth = torch.arange(1, num_blocks + 1, dtype=torch.float64) / max(num_blocks, 1)
    scores = e.pow(eta) * depth.pow(rho) / (1 + F.softplus(z))
    return torch.where(valid, scores, torch.full_like(scores, math.nan))


# ---------------------------------------------------------------------------------------------
# Whole-model diagnostics
# ---------------------------------------------------------------------------------------------


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


def _check_cpu_linalg(cpu_linalg: str) -> None:
    if cpu_linalg not in CPU_LINALG:
        raise ValueError(f"cpu_linalg must be one of {list(CPU_LINALG)}, got {cpu_linalg!r}")


def _numpy_path(t: Tensor, cpu_linalg: str) -> bool:
    return cpu_linalg == "numpy" and t.device.type == "cpu"


def _matmul(a: Tensor, b: Tensor, cpu_linalg: str, out: Optional[Tensor] = None) -> Tensor:
    """``a @ b`` (into ``out`` if given), through numpy on CPU with ``cpu_linalg="numpy"``.

    numpy works on the tensors' memory (``Tensor.numpy()`` shares it), so ``out`` is filled in
    place and strided views (``m.mT``) cost no copy; numpy hands ``A^T A`` to BLAS ``syrk``.
    """
    if not _numpy_path(a, cpu_linalg):
        return torch.matmul(a, b, out=out) if out is not None else a @ b
    a, b = a.detach().numpy(), b.detach().numpy()
    if out is None:
        return torch.from_numpy(np.matmul(a, b))
    np.matmul(a, b, out=out.detach().numpy())
    return out


def _eigvalsh_single_threaded(grams: Tensor) -> Tensor:
    torch.set_num_threads(1)  # per OS thread: the caller's setting is unchanged
    return torch.linalg.eigvalsh(grams)


def _eigvalsh_numpy(grams: Tensor) -> Tensor:
    """Eigenvalues of a CPU ``(B, n, n)`` batch with ``numpy.linalg.eigvalsh`` (LAPACK ``?syevd``
    of numpy's OpenBLAS; releases the GIL, so the thread split below runs in parallel)."""
    return torch.from_numpy(np.linalg.eigvalsh(grams.detach().numpy()))


def _batched_eigvalsh(grams: Tensor, cpu_linalg: str = "torch", workers: Optional[int] = None) -> Tensor:
    """``eigvalsh`` of a ``(B, n, n)`` batch.

    On CPU, LAPACK's symmetric eigen-solver (tridiagonalisation) is memory-bound and scales
    poorly with BLAS threads, and both backends solve a batch one matrix after the other. With
    ``workers`` (default ``torch.get_num_threads()``) ``> 1`` the batch is split into that many
    parts solved concurrently, one BLAS thread each (same LAPACK routine, same results; ~1.4x
    faster on 2 cores).
    """
    if grams.device.type != "cpu":
        return torch.linalg.eigvalsh(grams)
    numpy_path = _numpy_path(grams, cpu_linalg)
    workers = min(torch.get_num_threads() if workers is None else workers, grams.shape[0])
    if workers < 2:
        if numpy_path:
            with _blas_threads(1):
                return _eigvalsh_numpy(grams)
        return torch.linalg.eigvalsh(grams)
    solve = _eigvalsh_numpy if numpy_path else _eigvalsh_single_threaded
    with _blas_threads(1 if numpy_path else None), ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(solve, grams.tensor_split(workers)))
    return torch.cat(parts)


@contextlib.contextmanager
def _blas_threads(limit: Optional[int]):
    """Limit numpy's BLAS threads (threadpoolctl) inside the block; None: unchanged."""
    if limit is None:
        yield
        return
    with threadpoolctl.threadpool_limits(limits=limit, user_api="blas"):
        yield


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


def rank_method_dtype(rank_method: str) -> torch.dtype:
    """The computation precision of a ``rank_method`` (``exact``: float64, ``approximate``:
    float32)."""
    if rank_method not in RANK_METHODS:
        raise ValueError(f"rank_method must be one of {list(RANK_METHODS)}, got {rank_method!r}")
    return torch.float64 if rank_method == "exact" else torch.float32


class _RankQueue:
    """Gram matrices waiting for their eigenvalues, grouped by size, in preallocated batches.

    ``reserve`` hands out a slot and an empty ``n x n`` matrix inside its group's batch buffer
    (the caller writes the Gram matrix straight into it: no stacking copy); a full buffer is
    solved by one batched ``eigvalsh`` before the next reservation, and ``flush`` solves the
    rest. After ``flush`` the effective rank of every slot is in ``ranks``. A buffer holds at
    most ``chunk_bytes`` (at least one matrix).
    """

    def __init__(self, chunk_bytes: int, cpu_linalg: str = "torch", workers: int = 1):
        self.chunk_bytes = chunk_bytes
        self.cpu_linalg = cpu_linalg
        self.workers = workers
        self.buffers: Dict[Tuple[int, torch.dtype, torch.device], Tuple[Tensor, List[int]]] = {}
        self.ranks: Dict[int, float] = {}
        self.num_slots = 0

    def _new_slot(self) -> int:
        self.num_slots += 1
        return self.num_slots - 1

    def put(self, value: float) -> int:
        slot = self._new_slot()
        self.ranks[slot] = value
        return slot

    def reserve(self, n: int, dtype: torch.dtype, device: torch.device) -> Tuple[int, Tensor]:
        group = (n, dtype, torch.device(device))
        entry = self.buffers.get(group)
        if entry is not None and len(entry[1]) == entry[0].shape[0]:
            self._flush_group(group)
            entry = None
        if entry is None:
            capacity = max(1, self.chunk_bytes // (n * n * torch.finfo(dtype).bits // 8))
            entry = (torch.empty((capacity, n, n), dtype=dtype, device=device), [])
            self.buffers[group] = entry
        buffer, slots = entry
        slot = self._new_slot()
        slots.append(slot)
        return slot, buffer[len(slots) - 1]

    def push(self, gram: Tensor) -> int:
        slot, out = self.reserve(gram.shape[-1], gram.dtype, gram.device)
        out.copy_(gram)
        return slot

    def _flush_group(self, group) -> None:
        buffer, slots = self.buffers.pop(group, (None, []))
        if not slots:
            return
        ranks = _rank_from_eigvals(_batched_eigvalsh(buffer[: len(slots)], self.cpu_linalg, self.workers))
        self.ranks.update(zip(slots, ranks.double().cpu().tolist()))

    def flush(self) -> None:
        for group in list(self.buffers):
            self._flush_group(group)


class _KeyMatrices:
    """The matrices of one parameter (``W0`` and its updates), oriented so that the last side is
    the smaller one, in the computation precision; each Gram matrix is computed once."""

    def __init__(self, key: str, w0: Tensor, *, device, dtype: torch.dtype, cpu_linalg: str = "torch"):
        self.key = key
        self.cpu_linalg = cpu_linalg
        self.shape = w0.shape
        self.device = device if device is not None else w0.device
        self.dtype = dtype
        self._matrices: Dict[int, Tuple[Tensor, Tensor]] = {}
        self._grams: Dict[int, Tensor] = {}

    def matrix(self, t: Tensor) -> Tensor:
        if id(t) not in self._matrices:
            if t.shape != self.shape:
                raise ValueError(f"update of {self.key!r} has shape {tuple(t.shape)}, "
                                 f"the pretrained matrix {tuple(self.shape)}")
            # keep `t` referenced so that its id stays unique while cached
            self._matrices[id(t)] = (t, _orient(t.to(device=self.device, dtype=self.dtype)))
        return self._matrices[id(t)][1]

    def gram(self, t: Tensor) -> Tensor:
        if id(t) not in self._grams:
            m = self.matrix(t)
            self._grams[id(t)] = _matmul(m.mT, m, self.cpu_linalg)
        return self._grams[id(t)]

    def queue_rank(self, t: Tensor, queue: _RankQueue) -> int:
        """Queue ``r_eff(t)``; the Gram matrix is computed into the queue's batch buffer."""
        if id(t) in self._grams:
            return queue.push(self._grams[id(t)])
        m = self.matrix(t)
        slot, out = queue.reserve(m.shape[-1], m.dtype, m.device)
        _matmul(m.mT, m, self.cpu_linalg, out=out)
        self._grams[id(t)] = out
        return slot

    def commutator(self, a: Tensor, d: Tensor, eps: float) -> Tensor:
        x = _matmul(self.matrix(a).mT, self.matrix(d), self.cpu_linalg)
        return _commutator_from_grams(self.gram(a), self.gram(d), x, eps)


@dataclass
class BlockDiagnostics:
    """Per-block diagnostics in depth order.

    Attributes:
        e: ``(L,)`` float64 effective-rank contrasts; NaN where ``zero_update``.
        c: ``(L,)`` float64 commutator coefficients; NaN where ``zero_update``.
        zero_update: ``(L,)`` bool, the blocks whose update is exactly zero everywhere.
    """

    e: Tensor
    c: Tensor
    zero_update: Tensor


def _mean(values: List[float]) -> float:
    return math.fsum(values) / len(values)


def block_diagnostics(
    pretrained: Mapping[str, Tensor],
    updates: Sequence[Mapping[str, Tensor]],
    layout: BlockLayout,
    *,
    conflict: str = "base",
    conflict_updates: Optional[Sequence[Mapping[str, Tensor]]] = None,
    eps: float = 1e-8,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float64,
    rank_cache: Optional[MutableMapping] = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    cpu_linalg: str = "numpy",
) -> BlockDiagnostics:
    """Effective-rank contrast ``e`` and commutator coefficient ``c`` of every block.

    Per block: the unweighted mean over its diagnostic matrices, then the mean over update
    sources (or over task-vector pairs for ``conflict="pairwise"``). See the module docstring
    for the formulas and for how zero updates are handled.

    Args:
        pretrained: pretrained weights ``W0`` by name.
        updates: the sources of ``D``: ``[merged update]`` (``source=merged``) or
            ``[tau_1, ..., tau_T]`` (``source=task_vectors``); each holds at least the diagnostic
            matrices of every block.
        layout: the blocks (``blocks.find_blocks``).
        conflict: ``"base"``: ``c(W0, D)`` per source; ``"pairwise"``: ``c(tau_i, tau_j)`` over
            the pairs of ``conflict_updates``.
        conflict_updates: the task vectors of the pairwise conflict (default: ``updates``);
            at least two.
        eps: guard of the denominators of ``e`` and ``c``.
        device: where to compute (default: where the tensors are).
        dtype: precision of Gram matrices and eigenvalues (float64 is the reference).
        rank_cache: optional mapping ``rank_cache_key(name, W0, dtype) -> r_eff(W0)``, read and
            filled, so pretrained ranks are computed once across runs.
        chunk_bytes: memory bound of one batched ``eigvalsh`` call (default 64 MiB).
        cpu_linalg: ``numpy`` (default) or ``torch``: which BLAS/LAPACK does the CPU work (see
            ``CPU_LINALG``); numpy's BLAS then runs ``torch.get_num_threads()`` threads.

    Returns:
        The ``BlockDiagnostics``.

    Raises:
        ValueError: bad ``conflict``, fewer than two pairwise updates, no update, a block without
            diagnostic matrices, or an update whose shape differs from the pretrained matrix.
        KeyError: an update lacks a diagnostic matrix.
    """
    # 1. Validate.
    if conflict not in ("base", "pairwise"):
        raise ValueError(f"conflict must be 'base' or 'pairwise', got {conflict!r}")
    updates = list(updates)
    if not updates:
        raise ValueError("updates must hold at least one update (merged update or task vector)")
    if conflict == "pairwise":
        conflict_updates = updates if conflict_updates is None else list(conflict_updates)
        if len(conflict_updates) < 2:
            raise ValueError(
                "conflict='pairwise' needs at least two task vectors in conflict_updates, "
                f"got {len(conflict_updates)}"
            )
    _check_eps(eps)
    _check_dtype(dtype)
    if not (isinstance(chunk_bytes, int) and chunk_bytes > 0):
        raise ValueError(f"chunk_bytes must be a positive integer, got {chunk_bytes!r}")
    _check_cpu_linalg(cpu_linalg)
    workers = torch.get_num_threads()
    numpy_cpu = cpu_linalg == "numpy" and (device is None or torch.device(device).type == "cpu")
    with _numpy_threads(workers) if numpy_cpu else contextlib.nullcontext():
        return _block_diagnostics(pretrained, updates, layout, conflict=conflict,
                                  conflict_updates=conflict_updates, eps=eps, device=device, dtype=dtype,
                                  rank_cache=rank_cache, chunk_bytes=chunk_bytes, cpu_linalg=cpu_linalg,
                                  workers=workers)


@contextlib.contextmanager
def _numpy_threads(workers: int):
    """numpy's BLAS gets ``workers`` threads; torch's own (small, elementwise) work runs on one
    thread meanwhile, so that OpenBLAS's and OpenMP's spinning worker threads do not compete.
    torch's setting is restored on exit."""
    torch.set_num_threads(1)
    try:
        with _blas_threads(workers):
            yield
    finally:
        torch.set_num_threads(workers)


def _block_diagnostics(pretrained, updates, layout, *, conflict, conflict_updates, eps, device, dtype,
                       rank_cache, chunk_bytes, cpu_linalg, workers) -> BlockDiagnostics:
    queue = _RankQueue(chunk_bytes, cpu_linalg, workers)
    num_blocks = layout.num_blocks
    # Per block: per source the (slot of r_eff(W0), slot of r_eff(D)) of non-zero matrices; per
    # conflict term (source or pair) the indices of its c values in `c_values`.
    rank_slots: List[List[List[Tuple[int, int]]]] = []
    c_terms: List[List[List[int]]] = []
    c_values: List[Tensor] = []
    to_cache: List[Tuple[int, tuple]] = []

    for block in layout.blocks:
        keys = diagnostic_keys(block, pretrained)
        if not keys:
            raise ValueError(f"block {block.index} ({block.prefix!r}) has no diagnostic matrix "
                             "(2-D floating-point weight with both sides > 1)")
        block_ranks: List[List[Tuple[int, int]]] = [[] for _ in updates]
        num_terms = len(updates) if conflict == "base" else math.comb(len(conflict_updates), 2)
        block_c: List[List[int]] = [[] for _ in range(num_terms)]
        for key in keys:
            w0 = pretrained[key]
            mats = _KeyMatrices(key, w0, device=device, dtype=dtype, cpu_linalg=cpu_linalg)
            ds = [_get_update(u, key, "updates") for u in updates]
            nonzero = [bool(torch.any(d)) for d in ds]
            if not any(nonzero) and conflict == "base":
                continue
            # 3. Effective ranks (deferred to batched eigvalsh) of W0 and every non-zero D.
            if any(nonzero):
                cache_key = rank_cache_key(key, w0, dtype) if rank_cache is not None else None
                if cache_key is not None and cache_key in rank_cache:
                    slot_w0 = queue.put(float(rank_cache[cache_key]))
                else:
                    slot_w0 = mats.queue_rank(w0, queue)
                    if cache_key is not None:
                        to_cache.append((slot_w0, cache_key))
                for source, (d, nz) in enumerate(zip(ds, nonzero)):
                    if nz:
                        block_ranks[source].append((slot_w0, mats.queue_rank(d, queue)))
            # 4. Commutator coefficients.
            if conflict == "base":
                for source, (d, nz) in enumerate(zip(ds, nonzero)):
                    if nz:
                        block_c[source].append(len(c_values))
                        c_values.append(mats.commutator(w0, d, eps))
            else:
                taus = [_get_update(u, key, "conflict_updates") for u in conflict_updates]
                tau_nonzero = [bool(torch.any(t)) for t in taus]
                for pair, (i, j) in enumerate(combinations(range(len(taus)), 2)):
                    if not (tau_nonzero[i] or tau_nonzero[j]):
                        continue
                    block_c[pair].append(len(c_values))
                    if tau_nonzero[i] and tau_nonzero[j]:
                        c_values.append(mats.commutator(taus[i], taus[j], eps))
                    else:
                        c_values.append(torch.zeros((), dtype=torch.float64))
        rank_slots.append(block_ranks)
        c_terms.append(block_c)

    # 5. Eigenvalues of everything still queued; fill the cache.
    queue.flush()
    ranks = queue.ranks
    for slot, cache_key in to_cache:
        rank_cache[cache_key] = ranks[slot]
    c_flat = (
        torch.stack([v.to(device="cpu", dtype=torch.float64) for v in c_values]).tolist()
        if c_values else []
    )

    # 6. Block means: over matrices, then over sources / pairs.
    e = torch.full((num_blocks,), math.nan, dtype=torch.float64)
    c = torch.full((num_blocks,), math.nan, dtype=torch.float64)
    zero_update = torch.zeros(num_blocks, dtype=torch.bool)
    for index in range(num_blocks):
        per_source = [
            _mean([ranks[s0] / (ranks[sd] + eps) for s0, sd in pairs])
            for pairs in rank_slots[index] if pairs
        ]
        if not per_source:
            zero_update[index] = True
            continue
        e[index] = _mean(per_source)
        per_term = [_mean([c_flat[i] for i in term]) for term in c_terms[index] if term]
        c[index] = _mean(per_term) if per_term else 0.0
    if bool(zero_update.any()):
        log.info("Blocks with an exactly zero update (no score): %s",
                 zero_update.nonzero().flatten().tolist())
    return BlockDiagnostics(e=e, c=c, zero_update=zero_update)


def _get_update(update: Mapping[str, Tensor], key: str, name: str) -> Tensor:
    try:
        return update[key]
    except KeyError:
        raise KeyError(f"{name}: an update lacks the diagnostic matrix {key!r}") from None
