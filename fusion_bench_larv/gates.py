"""LARV's scores and gates: block diagnostics -> score ``s_l`` -> scale ``lambda_l``.

Everything that turns the per-block ``e`` and ``c`` of :mod:`fusion_bench_larv.diagnostics` into
scales lives here (docs/method.md has the definitions and whose each choice is). ``L`` blocks,
depth ``l = 0..L-1``:

* Standardisation: ``z_l = (c_l - mean c) / std c`` over the scored blocks (population std),
  ``z = 0`` when ``std < 1e-12``.
* Composite score: ``s_l = e_l^eta ((l + 1) / L)^rho / (1 + softplus(z_l))``; ``eta = 1`` and
  ``rho = 0.5`` are ours.
* ``tiered`` (the paper's main variant): ``k = len(tiers) >= 2`` levels. The ``n`` valid blocks
  are ranked by ascending score, ties broken shallower first, rank ``r = 0..n-1``; the block's
  tier is ``floor(r * k / n)`` and ``lambda_l = tiers[tier]``. For 12 blocks and 3 tiers the 4
  lowest-scored blocks get ``tiers[0]``. ``assignment="depth"`` ranks by depth instead (a
  depth-only ablation). The tiered scheme is the paper's; the default levels
  (``defaults.DEFAULT_TIERS``, ``defaults.TWO_LEVEL_TIERS``) are ours.
* ``continuous`` (the paper's ablation): ``s~_l = s_l / median(s)`` (the median of the valid
  scores, averaging the two middle values for an even count), ``lambda_l = 1 + a tanh(gamma
  (s~_l - 1))``, optionally clamped to ``[min_scale, max_scale]``. The ``tanh`` form and the
  defaults ``a = 0.5``, ``gamma = 3`` (so ``lambda`` lies in ``(0.5, 1.5)``) are ours. A median
  ``<= 0`` leaves ``s~`` undefined and raises ``ValueError``.
* ``linear_depth`` (ours): a fixed linear ramp ``lambda_l = alpha + beta l / (L - 1)``
  (``lambda = alpha`` for ``L = 1``), applied like LARV's scales, on top of the merger's own
  scaling; defaults ``alpha = beta = 0.6`` (ours). It is not LiNeS.
* ``lines``: LiNeS as published (Wang et al., ICLR 2025): the same ramp, with
  ``alpha = ||sum_t tau_t||_1 / (T ||tau_merged||_1)`` (:func:`lines_alpha`) on the merger's
  update at scale 1 (the merger's global scaling factor is set to 1), ``alpha`` for every
  parameter outside the blocks, and ``beta`` given (LiNeS tunes it on validation data).
* ``identity``: ``lambda_l = 1``.

Invalid blocks (by default those with a non-finite score, i.e. LARV's zero-update blocks) take no
part in standardisation, ranking or the median and get ``lambda = 1`` (tier index -1).
The gates as records (their settings, defaults, checks and rules) are in
:mod:`fusion_bench_larv.gate_table`. :func:`check_scales` is the last check before any weight is scaled;
:func:`depth_rank_correlation` measures how far the scores are a depth order.
"""

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TIER_ASSIGNMENTS",
    "standardize",
    "composite_score",
    "tiered_scales",
    "continuous_scales",
    "linear_depth_scales",
    "identity_scales",
    "lines_alpha",
    "depth_rank_correlation",
    "check_scales",
]

#: the ways to assign tiers (``tier_assignment``)
TIER_ASSIGNMENTS: Tuple[str, ...] = ("score", "depth")
STD_FLOOR = 1e-12


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


# ---------------------------------------------------------------------------------------------
# Scores
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
# Gates
# ---------------------------------------------------------------------------------------------


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
    if assignment not in TIER_ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {TIER_ASSIGNMENTS}, got {assignment!r}")

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
    """Linear depth ramp ``lambda_l = alpha + beta l / (L - 1)`` (``alpha`` if ``L = 1``): the rule of
    both the ``linear_depth`` gate (ours) and the ``lines`` gate (LiNeS, with its own alpha).

    Args:
        num_blocks: ``L >= 1``.
        alpha: the shallowest block's scale.
        beta: the increase up to the deepest block.

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


def lines_alpha(task_sum_l1: float, merged_l1: float, num_tasks: int) -> float:
    """LiNeS's ``alpha = ||sum_t tau_t||_1 / (T ||tau_merged||_1)`` (Wang et al., ICLR 2025), with
    ``tau_merged`` the merger's update at scale 1: ``1/T`` for task arithmetic, 1 for averaging.

    Raises:
        ValueError: a merged update of L1 norm 0 (nothing to rescale), a non-finite norm, or
            ``num_tasks < 1``.
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
    task_sum_l1 = _check_finite("||sum of task vectors||_1", task_sum_l1)
    merged_l1 = _check_finite("||merged update||_1", merged_l1)
    if merged_l1 <= 0:
        raise ValueError("LiNeS's alpha = ||Σ τ_t||_1 / (T ||τ_merged||_1) is undefined: the merged update is zero")
    return task_sum_l1 / (num_tasks * merged_l1)


def depth_rank_correlation(scores: Tensor, valid: Optional[Tensor] = None) -> Optional[float]:
    """Spearman's rank correlation between the valid blocks' scores and their depth.

    +1: the scores rank the blocks exactly by depth (the tiers are a depth split); values near
    0: the scores order the blocks otherwise. Ties get average ranks. ``None`` for fewer than
    two valid blocks or constant scores (undefined).
    """
    scores, valid = _scores_and_mask(scores, valid)
    values = scores[valid]
    depth = valid.nonzero().flatten().to(torch.float64)
    if values.numel() < 2 or not bool(torch.isfinite(values).all()) or float(values.std()) == 0.0:
        return None

    def ranks(x: Tensor) -> Tensor:
        order = sorted(range(len(x)), key=lambda i: float(x[i]))
        out = torch.empty(len(x), dtype=torch.float64)
        i = 0
        while i < len(order):  # average ranks over runs of equal values
            j = i
            while j + 1 < len(order) and float(x[order[j + 1]]) == float(x[order[i]]):
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    a, b = ranks(values), ranks(depth)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def identity_scales(num_blocks: int) -> Tensor:
    """``lambda_l = 1`` for every block: the base merger unchanged."""
    return torch.ones(_check_num_blocks(num_blocks), dtype=torch.float64)


def check_scales(block_scales: Tensor, valid: Tensor, gate: str) -> None:
    """The final check before anything is scaled: every λ finite and >= 0, and at least one
    scored block with λ > 0 (else the merge would be the pretrained model, silently)."""
    values = block_scales.tolist()
    bad = [(i, v) for i, v in enumerate(values) if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(
            f"gate {gate!r} gave block {bad[0][0]} the scale λ = {bad[0][1]!r}; every λ must be finite "
            f"and >= 0 (λ < 0 flips a task vector). Scales: {values}"
        )
    if not any(v > 0 for v, ok in zip(values, valid.tolist()) if ok):
        raise ValueError(
            f"gate {gate!r} gave every block λ = 0: the merge would be the pretrained model. Scales: {values}"
        )
