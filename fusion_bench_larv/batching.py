"""The diagnostics' batched kernel: Gram matrices once, eigenvalues by the batch.

``diagnostics.block_diagnostics`` walks the blocks and asks this module for the effective rank
and commutator coefficient of every (pretrained matrix, update) pair. :class:`KeyMatrices` holds
one parameter's matrices, oriented so that the last side is the smaller one, and computes each
Gram matrix once; :class:`RankQueue` collects the Gram matrices whose eigenvalues are needed,
written straight into a preallocated buffer per matrix size, and solves each full buffer with
one batched ``eigvalsh``. Products and eigenvalues run on one
:class:`fusion_bench_larv.linalg.Linalg` backend. The formulas are in docs/method.md and the
module docstring of :mod:`fusion_bench_larv.diagnostics`.
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from .linalg import Linalg


def orient(a: Tensor) -> Tensor:
    """Transpose ``(..., m, n)`` so that the last side is the smaller one."""
    return a if a.shape[-2] >= a.shape[-1] else a.mT


def rank_from_eigvals(eigvals: Tensor) -> Tensor:
    """``exp`` of the entropy of the normalised spectrum ``(..., n)`` -> ``(...)``; 0 if empty."""
    eigvals = eigvals.clamp_min(0)
    total = eigvals.sum(-1, keepdim=True)
    has_spectrum = total > 0
    p = eigvals / torch.where(has_spectrum, total, torch.ones_like(total))
    ranks = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return torch.where(has_spectrum.squeeze(-1), ranks, torch.zeros_like(ranks))


def commutator_from_grams(ga: Tensor, gd: Tensor, x: Tensor, eps: float) -> Tensor:
    """``c`` from ``G_A = A^T A``, ``G_D = D^T D`` and ``X = A^T D`` (each ``(..., n, n)``)."""
    tr_x2 = (x * x.mT).sum((-2, -1))
    sq_left = 2 * (ga * gd).sum((-2, -1)) - 2 * tr_x2
    sq_right = 2 * (x * x).sum((-2, -1)) - 2 * tr_x2
    norm_a2 = ga.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0)
    norm_d2 = gd.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0)
    numerator = 0.5 * (sq_left.clamp_min(0).sqrt() + sq_right.clamp_min(0).sqrt())
    return numerator / ((norm_a2 * norm_d2).sqrt() + eps)


class RankQueue:
    """Gram matrices waiting for their eigenvalues, grouped by size, in preallocated batches.

    ``reserve`` hands out a slot and an empty ``n x n`` matrix inside its group's batch buffer
    (the caller writes the Gram matrix straight into it: no stacking copy); a full buffer is
    solved by one batched ``eigvalsh`` before the next reservation, and ``flush`` solves the
    rest. After ``flush`` the effective rank of every slot is in ``ranks``. A buffer holds at
    most ``chunk_bytes`` (at least one matrix).
    """

    def __init__(self, chunk_bytes: int, linalg: Linalg, workers: int = 1):
        self.chunk_bytes = chunk_bytes
        self.linalg = linalg
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
        ranks = rank_from_eigvals(self.linalg.eigvalsh(buffer[: len(slots)], self.workers))
        self.ranks.update(zip(slots, ranks.double().cpu().tolist()))

    def flush(self) -> None:
        for group in list(self.buffers):
            self._flush_group(group)


class KeyMatrices:
    """The matrices of one parameter (``W0`` and its updates), oriented so that the last side is
    the smaller one, in the computation precision; each Gram matrix is computed once."""

    def __init__(self, key: str, w0: Tensor, *, device, dtype: torch.dtype, linalg: Linalg):
        self.key = key
        self.linalg = linalg
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
            self._matrices[id(t)] = (t, orient(t.to(device=self.device, dtype=self.dtype)))
        return self._matrices[id(t)][1]

    def gram(self, t: Tensor) -> Tensor:
        if id(t) not in self._grams:
            m = self.matrix(t)
            self._grams[id(t)] = self.linalg.matmul(m.mT, m)
        return self._grams[id(t)]

    def queue_rank(self, t: Tensor, queue: RankQueue) -> int:
        """Queue ``r_eff(t)``; the Gram matrix is computed into the queue's batch buffer."""
        if id(t) in self._grams:
            return queue.push(self._grams[id(t)])
        m = self.matrix(t)
        slot, out = queue.reserve(m.shape[-1], m.dtype, m.device)
        self.linalg.matmul(m.mT, m, out=out)
        self._grams[id(t)] = out
        return slot

    def commutator(self, a: Tensor, d: Tensor, eps: float) -> Tensor:
        x = self.linalg.matmul(self.matrix(a).mT, self.matrix(d))
        return commutator_from_grams(self.gram(a), self.gram(d), x, eps)
