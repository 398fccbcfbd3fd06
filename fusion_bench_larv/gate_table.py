"""The gates as records: each gate's settings, their defaults, their range check and its rule.

The rules themselves are the pure functions of :mod:`fusion_bench_larv.gates`; docs/method.md
says whose each gate and default is. Adding a gate is adding one :class:`Gate` to :data:`GATES`
(plus its docs and tests): the settings check, the schedule and the record read it from here.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from torch import Tensor

from .gates import continuous_scales, identity_scales, linear_depth_scales, tiered_scales

__all__ = ["Gate", "GATES"]


@dataclass(frozen=True)
class Gate:
    """One gate: its own settings, their defaults, their check and its rule.

    Args:
        name: the ``gate`` value users type.
        keys: the LARV settings it reads (``tiers``, ``lines_beta``, ...).
        defaults: its own value for a key whose setting is ``None`` (keys shared by two gates
            with different defaults, e.g. ``lines_alpha``).
        rule: ``(scores, valid, num_blocks, settings) -> (lambda, tier or None)``.
        check: refuses settings that give some block ``lambda < 0`` or every block
            ``lambda = 0`` (raises ``ValueError``), before any model is loaded.
        unit_scale: the base merger runs with its global scaling factor at 1 (LiNeS rescales the
            merger's update at scale 1, in place of that factor).
        post_only: the scales apply to the merged update (``apply: post``) whatever ``apply``
            says (LiNeS's published rule rescales the merged task vector).
        non_block_key: the setting whose value every parameter outside the blocks gets, in place
            of ``non_block_scale`` (LiNeS gives them ``alpha``).
    """

    name: str
    keys: Tuple[str, ...]
    rule: Callable[[Tensor, Tensor, int, Mapping[str, Any]], Tuple[Tensor, Optional[Tensor]]]
    check: Callable[[Mapping[str, Any]], None] = lambda settings: None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    unit_scale: bool = False
    post_only: bool = False
    non_block_key: Optional[str] = None

    def settings(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        """Its keys' values from ``values``, its own default where a value is ``None``."""
        out = {}
        for key in self.keys:
            value = values.get(key)
            out[key] = self.defaults.get(key) if value is None else value
        return out

    def scales(self, scores: Tensor, valid: Tensor, settings: Mapping[str, Any]) -> Tuple[Tensor, Optional[Tensor]]:
        """``(lambda, tier index or None)`` for the ``(L,)`` scores."""
        return self.rule(scores, valid, scores.numel(), self.settings(settings))


def _check_tiers(settings: Mapping[str, Any]) -> None:
    if all(t == 0 for t in settings["tiers"]):
        raise ValueError(f"tiers {list(settings['tiers'])} are all 0: every block would get λ = 0 (the "
                         "pretrained model); give at least one tier a value > 0")


def _check_continuous(settings: Mapping[str, Any]) -> None:
    amplitude, min_scale = settings["amplitude"], settings["min_scale"]
    if amplitude > 1 and min_scale is None:
        raise ValueError(
            f"amplitude {amplitude} > 1 lets the continuous gate λ = 1 + a·tanh(...) reach 1 - a = "
            f"{1 - amplitude} < 0 (flipped task vectors); use amplitude <= 1 or set min_scale >= 0"
        )
    if settings["max_scale"] == 0:
        raise ValueError("max_scale 0 gives every block λ = 0 (the pretrained model); use max_scale > 0")


def _check_ramp(settings: Mapping[str, Any]) -> None:
    alpha, beta = settings["lines_alpha"], settings["lines_beta"]
    if beta is None:
        raise ValueError(
            "gate 'lines' needs lines_beta: LiNeS chooses β on validation data, from 0.1…1.0 (0.1…1.5 for "
            "TIES); give one, e.g. lines_beta=1.0 (`reproduce-larv depth` selects it on the validation split)"
        )
    if alpha == "auto":
        return  # α > 0 by construction (a ratio of L1 norms); checked again with the scores
    if alpha < 0:
        raise ValueError(f"lines_alpha {alpha} < 0 gives the first block λ = {alpha} < 0")
    if alpha + beta < 0:
        raise ValueError(f"lines_alpha + lines_beta = {alpha} + {beta} < 0 gives the last block "
                         f"λ = {alpha + beta} < 0")
    if alpha == 0 and alpha + beta == 0:
        raise ValueError("lines_alpha = lines_beta = 0 gives every block λ = 0 (the pretrained model)")


def _check_linear_depth(settings: Mapping[str, Any]) -> None:
    if settings["lines_alpha"] == "auto":
        raise ValueError("lines_alpha 'auto' is LiNeS's rule (gate: lines); the linear_depth ramp takes a number")
    _check_ramp(settings)


def _ramp(scores, valid, num_blocks, settings):
    alpha = settings["lines_alpha"]
    if alpha == "auto":
        raise ValueError("lines_alpha 'auto' must be resolved to a number (gates.lines_alpha) before the gate runs")
    return linear_depth_scales(num_blocks, alpha=alpha, beta=settings["lines_beta"]), None


#: the gates, by name (``gate``): the one definition
GATES: Dict[str, Gate] = {g.name: g for g in [
    Gate("tiered", ("tiers", "tier_assignment"),
         lambda s, valid, n, kw: tiered_scales(s, kw["tiers"], valid=valid, assignment=kw["tier_assignment"]),
         _check_tiers),
    Gate("continuous", ("amplitude", "steepness", "min_scale", "max_scale"),
         lambda s, valid, n, kw: (continuous_scales(s, valid=valid, **kw), None), _check_continuous),
    Gate("linear_depth", ("lines_alpha", "lines_beta"), _ramp, _check_linear_depth,
         defaults={"lines_alpha": 0.6, "lines_beta": 0.6}),
    Gate("lines", ("lines_alpha", "lines_beta"), _ramp, _check_ramp, defaults={"lines_alpha": "auto"},
         unit_scale=True, post_only=True, non_block_key="lines_alpha"),
    Gate("identity", (), lambda s, valid, n, kw: (identity_scales(n), None)),
]}
