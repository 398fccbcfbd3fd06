"""LARV's per-block weight diagnostics: effective-rank contrast ``e`` and commutator ``c``.

LARV (Wang, Deng, Dou, Bi, Lu, arXiv 2602.09413) scores every transformer block from the weights
alone; docs/method.md states every definition and which choices are the paper's and which are
ours. With ``W0`` a pretrained matrix and ``D`` its update (the merged update, or one task
vector), this module computes, in float64 by default:

1. Effective rank (Roy & Vetterli, 2007) of an ``m x n`` matrix ``A`` with singular values
   ``sigma_j``::

       p_j = sigma_j^2 / sum_k sigma_k^2,   H(A) = -sum_j p_j ln p_j  (0 ln 0 = 0),
       r_eff(A) = exp(H(A)),                1 <= r_eff(A) <= min(m, n).

   ``sigma_j^2`` are the eigenvalues (``eigvalsh``, clamped at 0) of the Gram matrix on the
   smaller side. Convention (ours): the zero matrix has no spectrum and gets ``r_eff = 0``.
2. Effective-rank contrast::

       e = r_eff(W0) / (r_eff(D) + eps),    eps = 1e-8.

3. Commutator coefficient::

       c = 1/2 (||W0 D^T - D W0^T||_F + ||W0^T D - D^T W0||_F) / (||W0||_F ||D||_F + eps).

   The large side's product is never formed. Orient ``A`` (m x n) so that ``n <= m``; with the
   Gram matrices ``G_A = A^T A``, ``G_D = D^T D`` and ``X = A^T D`` (all n x n)::

       ||A D^T - D A^T||_F^2 = 2 tr(G_A G_D) - 2 tr(X^2),
       ||A^T D - D^T A||_F^2 = 2 ||X||_F^2   - 2 tr(X^2),
       ||A||_F^2 = tr(G_A),  ||D||_F^2 = tr(G_D),

   each square clamped at 0 before the root. ``c`` is symmetric under transposing both
   matrices, so the orientation does not change it.

Block values are unweighted means over the block's diagnostic matrices (2-D floating-point
weights with both sides > 1, see ``blocks.diagnostic_keys``), then means over the update sources
(one merged update, or the ``T`` task vectors). Standardisation of ``c`` and the composite score
are in :mod:`fusion_bench_larv.gates`, where scores become scales. Choices that are ours:

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
one batched ``eigvalsh`` on ``device`` if given. CPU work goes through one
:class:`fusion_bench_larv.linalg.Linalg` backend (``cpu_linalg``), chosen once. Pretrained ranks
can be memoised across runs (:mod:`fusion_bench_larv.rank_cache`). ``dtype=torch.float64`` is
the exact path (``diagnostics_precision: exact``); ``dtype=torch.float32`` is the approximate mode
(``diagnostics_precision: approximate``): its ``r_eff`` error against float64 is measured in
``tests/test_diagnostics.py`` and docs/performance.md; it stays below 1e-6 relative on full-rank
matrices but not on exactly rank-deficient updates (up to ~6e-5 measured), which is why it is
not the default.
"""

import logging
import math
from dataclasses import dataclass
from itertools import combinations
from typing import List, Mapping, MutableMapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .batching import KeyMatrices, RankQueue, commutator_from_grams, orient, rank_from_eigvals
from .blocks import BlockLayout, diagnostic_keys
from .linalg import Linalg, cpu_backend
from .rank_cache import rank_cache_key

log = logging.getLogger(__name__)

__all__ = [
    "effective_rank",
    "rank_contrast",
    "commutator_coefficient",
    "BlockDiagnostics",
    "block_diagnostics",
    "combine_diagnostics",
    "PRECISIONS",
    "precision_dtype",
]

DEFAULT_CHUNK_BYTES = 64 * 2**20
#: ``exact``: float64 Gram matrices, eigenvalues and commutator products (the reference);
#: ``approximate``: the same computation in float32 (measured error in docs/performance.md).
PRECISIONS: Tuple[str, ...] = ("exact", "approximate")


def precision_dtype(diagnostics_precision: str) -> torch.dtype:
    """The computation precision of a ``diagnostics_precision`` (``exact``: float64, ``approximate``:
    float32)."""
    if diagnostics_precision not in PRECISIONS:
        raise ValueError(f"diagnostics_precision must be one of {list(PRECISIONS)}, got {diagnostics_precision!r}")
    return torch.float64 if diagnostics_precision == "exact" else torch.float32


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
    oriented = orient(a.to(dtype))
    return rank_from_eigvals(torch.linalg.eigvalsh(oriented.mT @ oriented))


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
    a = orient(a.to(torch.float64))
    d = orient(d.to(torch.float64))
    return commutator_from_grams(a.mT @ a, d.mT @ d, a.mT @ d, eps)


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
    cpu_linalg: Union[str, Linalg] = "numpy",
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
        cpu_linalg: ``numpy`` (default), ``torch``, or a ``linalg.Linalg``: which BLAS/LAPACK
            does the CPU work; numpy's BLAS then runs ``torch.get_num_threads()`` threads.

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
    linalg = cpu_backend(cpu_linalg)
    workers = torch.get_num_threads()
    with linalg.threads(workers, device):
        return _block_diagnostics(pretrained, updates, layout, conflict=conflict,
                                  conflict_updates=conflict_updates, eps=eps, device=device, dtype=dtype,
                                  rank_cache=rank_cache, chunk_bytes=chunk_bytes, linalg=linalg,
                                  workers=workers)


def _block_diagnostics(pretrained, updates, layout, *, conflict, conflict_updates, eps, device, dtype,
                       rank_cache, chunk_bytes, linalg, workers) -> BlockDiagnostics:
    queue = RankQueue(chunk_bytes, linalg, workers)
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
            mats = KeyMatrices(key, w0, device=device, dtype=dtype, linalg=linalg)
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


def combine_diagnostics(per_source: Sequence[BlockDiagnostics]) -> BlockDiagnostics:
    """Average per-source block diagnostics, skipping sources whose block update is zero."""
    e = torch.stack([d.e for d in per_source])
    c = torch.stack([d.c for d in per_source])
    zero = torch.stack([d.zero_update for d in per_source]).all(dim=0)
    return BlockDiagnostics(e=e.nanmean(dim=0), c=c.nanmean(dim=0), zero_update=zero)
