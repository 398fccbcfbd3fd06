"""The schedule: per-block scales from the diagnostics, resolved to ``{parameter name: scale}``.

The middle layer (see docs/method.md): it knows state dicts and parameter names, but no Hydra and
no FusionBench pools. ``algorithm.py`` calls it; :mod:`~fusion_bench_larv.diagnostics`,
:mod:`~fusion_bench_larv.gates` and :mod:`~fusion_bench_larv.blocks` hold the math it is built
from. Given the block diagnostics ``e``, ``c`` and a block layout, :func:`build_schedule`
computes per block

    z_l = gates.standardize(c)              (zero-update blocks left out)
    s_l = gates.composite_score(e, z)       e_l^eta ((l+1)/L)^rho / (1 + softplus(z_l))
    lambda_l = gate.scales(s)               (gate_table.GATES: tiered | continuous | linear_depth | lines | identity)

checks the scales (:func:`gates.check_scales`) and resolves them to every parameter name
(``blocks.scale_map``; non-block parameters get ``non_block_scale``). The result, a
:class:`LayerSchedule`, is what LARV logs, saves and applies.
"""

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import Tensor

from .blocks import BlockLayout, scale_map
from .diagnostics import BlockDiagnostics
from .gate_table import Gate
from .gates import check_scales, composite_score, depth_rank_correlation, standardize

log = logging.getLogger(__name__)

__all__ = ["CONFLICTS", "SOURCES", "APPLIES", "LayerSchedule", "build_schedule"]

#: where the conflict term, the update D and the scales come from / go (docs/method.md)
CONFLICTS: Tuple[str, ...] = ("base", "pairwise")
SOURCES: Tuple[str, ...] = ("merged", "task_vectors")
APPLIES: Tuple[str, ...] = ("post", "pre")


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

    @property
    def score_depth_spearman(self) -> Optional[float]:
        """Spearman's rank correlation of the scores with depth (+1: the scores are a depth order)."""
        return depth_rank_correlation(self.s, ~self.diagnostics.zero_update)

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


def build_schedule(
    diagnostics: BlockDiagnostics,
    layout: BlockLayout,
    *,
    eta: float,
    rho: float,
    non_block_scale: float,
    gate: Gate,
    settings: Mapping[str, Any],
) -> LayerSchedule:
    """Scores and scales from block diagnostics (see the module docstring).

    Args:
        diagnostics: per-block ``e``, ``c`` and the zero-update mask.
        layout: the blocks.
        eta, rho: the score's exponents.
        non_block_scale: the scale of every parameter outside the blocks.
        gate: the gate record (``gate_table.GATES[name]``).
        settings: the LARV settings the gate reads (its own defaults fill ``None``s).
    """
    valid = ~diagnostics.zero_update
    if not bool(valid.any()):
        raise ValueError(
            "every block's update is exactly zero: the base merger changed nothing inside the "
            f"{layout.num_blocks} blocks, so LARV has nothing to rescale"
        )
    z = standardize(diagnostics.c, valid)
    s = composite_score(diagnostics.e, z, eta=eta, rho=rho, valid=valid)
    block_scales, tier = gate.scales(s, valid, settings)
    check_scales(block_scales, valid, gate.name)
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
