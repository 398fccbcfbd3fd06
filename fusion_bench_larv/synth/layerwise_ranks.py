"""What sets task arithmetic's e in ``python -m fusion_bench_larv.synth layerwise``: the effective
ranks behind it, block by block (docs/benchmark.md, "Why fact 4 fails for task arithmetic").

LARV's e_ℓ of a merged update D is r_eff(W0) / r_eff(D), averaged over the block's diagnostic
matrices. For task arithmetic D is λ Σ_t τ_t, and r_eff does not see λ, so its e follows the rank
of the sum of the task updates. This module reports that rank beside the rank of each update
alone, so that a report shows which of the two sets the trend with depth, and splits task
arithmetic's e by matrix kind (attention q/k/v/out, MLP fc1/fc2), so that it shows which
matrices make the trend.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ..blocks import BlockLayout, diagnostic_keys
from ..diagnostics import effective_rank
from ..gates import depth_rank_correlation

__all__ = ["rank_profile"]


def rank_profile(theta0: Mapping[str, torch.Tensor], finetuned: Mapping[str, Mapping[str, torch.Tensor]],
                 layout: BlockLayout, eps: float = 1e-8) -> dict:
    """Per block, means over its diagnostic matrices (``blocks.diagnostic_keys``) of r_eff(W0)
    (``pretrained``), of r_eff(τ_t) (then over the tasks of ``finetuned``: ``task``) and of
    r_eff(Σ_t τ_t) (``sum``); ``e_tasks``: each task's own contrast r_eff(W0) / (r_eff(τ_t) + eps),
    averaged over matrices and tasks (LARV's ``source: task_vectors``), and ``e_tasks_rho``, its
    Spearman correlation with depth. ``by_matrix`` splits task arithmetic's e by matrix kind (the
    name after the block's prefix, e.g. ``self_attn.q_proj.weight``): per kind and block, the same
    three ranks and e = r_eff(W0) / (r_eff(Σ_t τ_t) + eps), with e's Spearman ``e_rho``; the mean of
    a block's kinds is task arithmetic's e_ℓ. A block whose updates are all zero, or that lacks the
    kind, gets ``nan`` (left out of the Spearman). ``eps`` is the diagnostics' default."""
    out = {"pretrained": [], "task": [], "sum": [], "e_tasks": []}
    kinds: dict = {}
    for depth, block in enumerate(layout.blocks):
        r0, r_tau, r_sum, zero = [], [], [], True
        for key in diagnostic_keys(block, theta0):
            w0 = theta0[key].double()
            taus = torch.stack([state[key].double() for state in finetuned.values()]) - w0  # [T, m, n]
            r0.append(effective_rank(w0))
            r_tau.append(effective_rank(taus))  # batched over the tasks
            r_sum.append(effective_rank(taus.sum(0)))
            moved = float(taus.abs().max()) > 0.0
            zero = zero and not moved
            if moved:
                kind = kinds.setdefault(key[len(block.prefix):], {"pretrained": {}, "task": {}, "sum": {}})
                kind["pretrained"][depth], kind["task"][depth], kind["sum"][depth] = \
                    float(r0[-1]), float(r_tau[-1].mean()), float(r_sum[-1])
        r0, r_tau, r_sum = torch.stack(r0), torch.stack(r_tau, dim=1), torch.stack(r_sum)  # [M], [T, M], [M]
        out["pretrained"].append(float(r0.mean()))
        out["task"].append(math.nan if zero else float(r_tau.mean()))
        out["sum"].append(math.nan if zero else float(r_sum.mean()))
        out["e_tasks"].append(math.nan if zero else float((r0 / (r_tau + eps)).mean()))
    out["e_tasks_rho"] = _rho(out["e_tasks"])
    out["by_matrix"] = {name: _kind(kind, len(layout.blocks), eps) for name, kind in kinds.items()}
    return out


def _kind(kind: dict, num_blocks: int, eps: float) -> dict:
    """One matrix kind's ranks as lists over all blocks (``nan`` where a block has none), with
    task arithmetic's e for that kind alone and its Spearman with depth."""
    lists = {name: [values.get(i, math.nan) for i in range(num_blocks)] for name, values in kind.items()}
    lists["e"] = [r0 / (rs + eps) for r0, rs in zip(lists["pretrained"], lists["sum"])]
    lists["e_rho"] = _rho(lists["e"])
    return lists


def _rho(values: list) -> float:
    """Spearman correlation of per-block values with depth, leaving out the ``nan`` blocks."""
    e = torch.tensor(values, dtype=torch.float64)
    return depth_rank_correlation(e, torch.isfinite(e))
