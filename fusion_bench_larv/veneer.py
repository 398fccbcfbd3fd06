"""The veneer: per-block scales from the diagnostics, resolved to ``{parameter name: scale}``.

This is the middle layer (see STYLE.md): it knows state dicts and parameter names, but no
Hydra and no FusionBench pools. ``algorithm.py`` calls it; ``diagnostics.py``, ``gates.py``
and ``blocks.py`` hold the math it is built from.

Given the pretrained weights θ0, the update sources D (the merged update Δ, or the task
vectors τ_t) and a block layout, :func:`build_schedule` computes per block

    e_ℓ, c_ℓ  (diagnostics.block_diagnostics)
    z_ℓ = standardize(c)                    (zero-update blocks left out)
    s_ℓ = e_ℓ^η ((ℓ+1)/L)^ρ / (1 + softplus(z_ℓ))
    λ_ℓ = gate(s)                           (tiered | continuous | linear_depth | identity)

and resolves λ to every parameter name (non-block parameters get ``non_block_scale``).
:func:`rescale_update_` applies a schedule in place: θ ← θ0 + λ (θ − θ0). The same operation
is the ``post`` veneer (θ = merged model) and the ``pre`` veneer (θ = one fine-tuned model),
and it leaves tensors whose scale is exactly 1 untouched, so ``gate=identity`` reproduces the
base merger bit for bit.
"""

import logging
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .blocks import BlockLayout, scale_map
from .diagnostics import BlockDiagnostics, composite_score, standardize
from .gates import continuous_scales, identity_scales, linear_depth_scales, tiered_scales

log = logging.getLogger(__name__)

Gate = Literal["tiered", "continuous", "linear_depth", "identity"]
TierAssignment = Literal["score", "depth"]
Conflict = Literal["base", "pairwise"]
Source = Literal["merged", "task_vectors"]
Apply = Literal["post", "pre"]

GATES: Tuple[str, ...] = ("tiered", "continuous", "linear_depth", "identity")
TIER_ASSIGNMENTS: Tuple[str, ...] = ("score", "depth")
CONFLICTS: Tuple[str, ...] = ("base", "pairwise")
SOURCES: Tuple[str, ...] = ("merged", "task_vectors")
APPLIES: Tuple[str, ...] = ("post", "pre")


# ----------------------------------------------------------------------------- state dicts
def float_state_dict(model: torch.nn.Module) -> Dict[str, Tensor]:
    """The model's floating-point state-dict entries (views on its parameters, not copies)."""
    return {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def snapshot(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A detached copy on CPU (θ0 must survive mergers that modify the pretrained model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


@torch.no_grad()
def restore_(state_dict: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> None:
    """In place: every tensor of ``state_dict`` takes the value of ``reference`` (e.g. θ0 back
    into a pretrained model a merger wrote into)."""
    for key, value in state_dict.items():
        value.copy_(reference[key])


def check_finite(name: str, state_dict: Mapping[str, Tensor]) -> None:
    """Raise ``ValueError`` naming the model and the first tensors holding NaN or Inf."""
    # Fast path: a finite sum proves every entry finite (NaN and Inf propagate); a sum that
    # overflows (huge but finite entries) falls back to the exact element-wise check.
    bad = [
        k for k, v in state_dict.items()
        if not bool(torch.isfinite(v.sum())) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ValueError(
            f"model '{name}' has NaN or Inf values in {len(bad)} tensor(s), e.g. {bad[:3]}"
        )


def check_compatible(
    name: str, state_dict: Mapping[str, Tensor], reference: Mapping[str, Tensor]
) -> None:
    """Raise ``ValueError`` if ``state_dict`` does not have the reference's keys and shapes."""
    missing = [k for k in reference if k not in state_dict]
    extra = [k for k in state_dict if k not in reference]
    if missing or extra:
        raise ValueError(
            f"model '{name}' does not match the pretrained model's parameters: "
            f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}"
        )
    for k, ref in reference.items():
        if state_dict[k].shape != ref.shape:
            raise ValueError(
                f"model '{name}': parameter '{k}' has shape {tuple(state_dict[k].shape)}, "
                f"the pretrained model has {tuple(ref.shape)}"
            )


class Delta(Mapping[str, Tensor]):
    """``{key: weights[key] - base[key]}`` computed on access (no full copy of the update)."""

    def __init__(self, weights: Mapping[str, Tensor], base: Mapping[str, Tensor]):
        self._weights, self._base = weights, base

    def __getitem__(self, key: str) -> Tensor:
        w = self._weights[key]
        return w.detach() - self._base[key].to(w.device, w.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


@torch.no_grad()
def rescale_update_(
    state_dict: Mapping[str, Tensor], base: Mapping[str, Tensor], scales: Mapping[str, float]
) -> int:
    """In place: ``θ[k] ← θ0[k] + λ_k (θ[k] − θ0[k])`` for every key whose scale is not 1.

    Returns the number of tensors changed. Keys with λ == 1 are not touched at all, so an
    all-ones schedule leaves the weights bit-identical.
    """
    changed = 0
    for key, lam in scales.items():
        if lam == 1.0:
            continue
        w = state_dict[key]
        b = base[key].to(w.device, w.dtype)
        w.sub_(b).mul_(lam).add_(b)
        changed += 1
    return changed


# ----------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class LayerSchedule:
    """Everything LARV decided, per block and per parameter."""

    layout: BlockLayout
    diagnostics: BlockDiagnostics
    z: Tensor  # (L,) standardized conflict, NaN for zero-update blocks
    s: Tensor  # (L,) composite score, NaN for zero-update blocks
    tier: Optional[Tensor]  # (L,) tier index for the tiered gate (-1: zero-update block)
    block_scales: Tensor  # (L,) λ_ℓ
    scales: Dict[str, float]  # every parameter name -> its scale

    def rows(self) -> List[Dict]:
        """One JSON-ready row per block: index, prefix, e, c, z, s, tier, scale."""
        nan_to_none = lambda x: None if math.isnan(x) else x
        rows = []
        for block in self.layout.blocks:
            i = block.index
            rows.append(
                {
                    "index": i,
                    "prefix": block.prefix,
                    "e": nan_to_none(float(self.diagnostics.e[i])),
                    "c": nan_to_none(float(self.diagnostics.c[i])),
                    "z": nan_to_none(float(self.z[i])),
                    "s": nan_to_none(float(self.s[i])),
                    "tier": None if self.tier is None or int(self.tier[i]) < 0 else int(self.tier[i]),
                    "scale": float(self.block_scales[i]),
                    "zero_update": bool(self.diagnostics.zero_update[i]),
                }
            )
        return rows


def gate_scales(
    s: Tensor,
    valid: Tensor,
    *,
    gate: Gate,
    tiers: Sequence[float],
    tier_assignment: TierAssignment,
    amplitude: float,
    steepness: float,
    min_scale: Optional[float],
    max_scale: Optional[float],
    lines_alpha: float,
    lines_beta: float,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Turn scores into per-block scales with the chosen gate. Returns (λ, tier or None)."""
    num_blocks = s.numel()
    if gate == "tiered":
        return tiered_scales(s, tiers, valid=valid, assignment=tier_assignment)
    if gate == "continuous":
        lam = continuous_scales(
            s, amplitude=amplitude, steepness=steepness,
            min_scale=min_scale, max_scale=max_scale, valid=valid,
        )
        return lam, None
    if gate == "linear_depth":
        return linear_depth_scales(num_blocks, alpha=lines_alpha, beta=lines_beta), None
    if gate == "identity":
        return identity_scales(num_blocks), None
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


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


def combine_diagnostics(per_source: Sequence[BlockDiagnostics]) -> BlockDiagnostics:
    """Average per-source block diagnostics, skipping sources whose block update is zero."""
    e = torch.stack([d.e for d in per_source])
    c = torch.stack([d.c for d in per_source])
    zero = torch.stack([d.zero_update for d in per_source]).all(dim=0)
    return BlockDiagnostics(e=e.nanmean(dim=0), c=c.nanmean(dim=0), zero_update=zero)


def build_schedule(
    diagnostics: BlockDiagnostics,
    layout: BlockLayout,
    *,
    eta: float,
    rho: float,
    non_block_scale: float,
    **gate_kwargs,
) -> LayerSchedule:
    """Scores and scales from block diagnostics (see the module docstring)."""
    valid = ~diagnostics.zero_update
    if not bool(valid.any()):
        raise ValueError(
            "every block's update is exactly zero: the base merger changed nothing inside the "
            f"{layout.num_blocks} blocks, so LARV has nothing to rescale"
        )
    z = standardize(diagnostics.c, valid)
    s = composite_score(diagnostics.e, z, eta=eta, rho=rho, valid=valid)
    block_scales, tier = gate_scales(s, valid, **gate_kwargs)
    check_scales(block_scales, valid, gate_kwargs.get("gate", "?"))
    skipped = [b.index for b in layout.blocks if not bool(valid[b.index])]
    if skipped:
        log.warning(
            "LARV: blocks %s have an exactly zero update: no score, scale 1.0, left out of the "
            "standardization and the tier ranking", skipped,
        )
    return LayerSchedule(
        layout=layout,
        diagnostics=diagnostics,
        z=z,
        s=s,
        tier=tier,
        block_scales=block_scales,
        scales=scale_map(layout, block_scales.tolist(), non_block_scale),
    )
