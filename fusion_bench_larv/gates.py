"""LARV gates: per-block scores -> per-block scales ``lambda_l``.

LARV (Wang et al., arXiv 2602.09413) turns the block scores ``s_l`` of ``diagnostics`` into scales
of the blocks' task vectors. Rules (``L`` blocks, depth ``l = 0..L-1``):

* ``tiered`` (the paper's main variant): ``k = len(tiers) >= 2`` levels. The ``n`` valid blocks
  are ranked by ascending score, ties broken shallower first, rank ``r = 0..n-1``; the block's
  tier is ``floor(r * k / n)`` and ``lambda_l = tiers[tier]``. For 12 blocks and 3 tiers the 4
  lowest-scored blocks get ``tiers[0]``. ``assignment="depth"`` ranks by depth instead (a
  depth-only ablation). The tiered scheme is the paper's; the default levels ``[0.6, 1.0, 1.2]``
  (3 tiers) and ``[0.8, 1.2]`` (2 tiers) are ours: the paper's values are not available to us.
* ``continuous`` (the paper's ablation): ``s~_l = s_l / median(s)`` (the median of the valid
  scores, averaging the two middle values for an even count), ``lambda_l = 1 + a tanh(gamma
  (s~_l - 1))``, optionally clamped to ``[min_scale, max_scale]``. The ``tanh`` form and the
  defaults ``a = 0.5``, ``gamma = 3`` (so ``lambda`` lies in ``(0.5, 1.5)``) are ours. A median
  ``<= 0`` leaves ``s~`` undefined and raises ``ValueError``.
* ``linear_depth`` (LiNeS-style baseline, Wang et al., ICLR 2025): ``lambda_l = alpha + beta l /
  (L - 1)``, ``lambda = alpha`` for ``L = 1``; defaults ``alpha = beta = 0.6`` (ours).
* ``identity``: ``lambda_l = 1``.

Invalid blocks (by default those with a non-finite score, i.e. LARV's zero-update blocks) take no
part in ranking or in the median and get ``lambda = 1`` (tier index -1).
"""

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["tiered_scales", "continuous_scales", "linear_depth_scales", "identity_scales"]

ASSIGNMENTS = ("score", "depth")


def _scores_and_mask(scores: Tensor, valid: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D tensor, got shape {tuple(scores.shape)}")
    if valid is None:
        return scores, torch.isfinite(scores)
    valid = torch.as_tensor(valid).detach().cpu()
    if valid.dtype != torch.bool or valid.shape != scores.shape:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(scores.shape)}, got "
                         f"{valid.dtype} {tuple(valid.shape)}")
    return scores, valid


def _check_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_num_blocks(num_blocks) -> int:
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int):
        raise TypeError(f"num_blocks must be an int, got {num_blocks!r}")
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks!r}")
    return num_blocks


def tiered_scales(
    scores: Tensor,
    tiers: Sequence[float],
    *,
    valid: Optional[Tensor] = None,
    assignment: str = "score",
) -> Tuple[Tensor, Tensor]:
    """Tiered gate: rank the valid blocks, split the ranks into ``len(tiers)`` equal groups.

    Args:
        scores: ``(L,)`` block scores (ascending rank = lowest score first).
        tiers: the scale of each tier, lowest-ranked tier first; at least two finite values
            ``>= 0``.
        valid: ``(L,)`` bool mask of the blocks to rank; default: finite scores.
        assignment: ``"score"`` ranks by ascending score (ties: shallower first); ``"depth"``
            ranks by depth (shallowest first) and ignores the score values.

    Returns:
        ``(scales, tier_index)``: ``(L,)`` float64 scales (1.0 for invalid blocks) and ``(L,)``
        long tier indices (-1 for invalid blocks).

    Raises:
        ValueError: fewer than two tiers, a negative or non-finite tier, a bad ``assignment``, a
            bad ``valid`` mask, or a non-finite score of a valid block (``assignment="score"``).
    """
    scores, valid = _scores_and_mask(scores, valid)
    if isinstance(tiers, (str, bytes)) or not isinstance(tiers, (Sequence, Tensor)):
        raise TypeError(f"tiers must be a sequence of numbers, got {tiers!r}")
    levels = [float(t) for t in tiers]
    if len(levels) < 2:
        raise ValueError(f"tiers must hold at least 2 levels, got {list(tiers)!r}")
    if not all(math.isfinite(t) and t >= 0 for t in levels):
        raise ValueError(f"tiers must be finite and >= 0, got {list(tiers)!r}")
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")

    candidates = valid.nonzero().flatten().tolist()
    if assignment == "score":
        if not bool(torch.isfinite(scores[valid]).all()):
            raise ValueError(f"scores must be finite on the valid blocks, got {scores.tolist()}")
        order = sorted(candidates, key=lambda block: (scores[block].item(), block))
    else:
        order = candidates
    num_levels, num_ranked = len(levels), len(order)
    scales = torch.ones(scores.shape[0], dtype=torch.float64)
    tier_index = torch.full((scores.shape[0],), -1, dtype=torch.long)
    for rank, block in enumerate(order):
        tier = rank * num_levels // num_ranked
        tier_index[block] = tier
        scales[block] = levels[tier]
    return scales, tier_index


def continuous_scales(
    scores: Tensor,
    *,
    amplitude: float = 0.5,
    steepness: float = 3.0,
    min_scale: Optional[float] = None,
    max_scale: Optional[float] = None,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """Continuous gate ``lambda = 1 + a tanh(gamma (s / median(s) - 1))``, optionally clamped.

    Args:
        scores: ``(L,)`` block scores.
        amplitude: ``a`` (default 0.5: ours).
        steepness: ``gamma`` (default 3: ours).
        min_scale: optional lower clamp.
        max_scale: optional upper clamp.
        valid: ``(L,)`` bool mask of the blocks that take part; default: finite scores.

    Returns:
        ``(L,)`` float64 scales, 1.0 for invalid blocks.

    Raises:
        ValueError: non-finite parameters, ``min_scale > max_scale``, a non-finite valid score,
            or a median of the valid scores ``<= 0``.
    """
    scores, valid = _scores_and_mask(scores, valid)
    amplitude = _check_finite("amplitude", amplitude)
    steepness = _check_finite("steepness", steepness)
    if min_scale is not None:
        min_scale = _check_finite("min_scale", min_scale)
    if max_scale is not None:
        max_scale = _check_finite("max_scale", max_scale)
    if min_scale is not None and max_scale is not None and min_scale > max_scale:
        raise ValueError(f"min_scale ({min_scale}) must not exceed max_scale ({max_scale})")

    scales = torch.ones_like(scores)
    if not bool(valid.any()):
        return scales
    values = scores[valid]
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"scores must be finite on the valid blocks, got {scores.tolist()}")
    median = torch.quantile(values, 0.5)
    if float(median) <= 0:
        raise ValueError(f"the median of the valid scores must be > 0, got {float(median)!r} "
                         f"(scores {scores.tolist()})")
    gated = 1 + amplitude * torch.tanh(steepness * (values / median - 1))
    if min_scale is not None or max_scale is not None:
        gated = gated.clamp(min=min_scale, max=max_scale)
    scales[valid] = gated
    return scales


def linear_depth_scales(num_blocks: int, *, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """LiNeS-style depth schedule ``lambda_l = alpha + beta l / (L - 1)`` (``alpha`` if ``L = 1``).

    Args:
        num_blocks: ``L >= 1``.
        alpha: the shallowest block's scale (default 0.6: ours).
        beta: the increase up to the deepest block (default 0.6: ours).

    Returns:
        ``(L,)`` float64 scales.
    """
    num_blocks = _check_num_blocks(num_blocks)
    alpha = _check_finite("alpha", alpha)
    beta = _check_finite("beta", beta)
    if num_blocks == 1:
        return torch.full((1,), alpha, dtype=torch.float64)
    depth = torch.arange(num_blocks, dtype=torch.float64) / (num_blocks - 1)
    return alpha + beta * depth


def identity_scales(num_blocks: int) -> Tensor:
    """``lambda_l = 1`` for every block: the base merger unchanged."""
    return torch.ones(_check_num_blocks(num_blocks), dtype=torch.float64)
