"""The depth-prior comparison (``reproduce-larv depth``; the paper's Appendix D) as rows and tables.

Per (backbone, task count, merger) the rows of :data:`ROWS`, each on the test split:

* fixed settings: the bare merger at its FusionBench setting; LARV with its defaults; LARV with
  ρ = 0 (no depth prior in the score); LARV's tier levels assigned by depth; the linear ramp
  (``gate: linear_depth``, ours);
* tuned on the validation split (marked ``tuned``; ``paper/select.py``): the bare merger at its
  best global scale, LiNeS at its best β, LARV at its best tier levels.

:func:`depth_rows` gives one CSV row each: test accuracy, Δ vs the bare merger, for tuned rows
the key, the selected value and its validation accuracy, and for LARV rows the rank
correlation of the scores with depth. :func:`depth_tables` renders one table per setting with a
"best" row per merger (the highest test accuracy, by how much it beats the bare merger and the
runner-up). Nothing here chooses anything: the tuned values were chosen on validation data.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .collect import Index, merger_label, mergers_present, setting_order, variant_crit
from .experiments import DEPTH_FIXED_ROWS, DEPTH_TUNED_ROWS, GATE_VARIANTS, MERGERS
from .render import Table

__all__ = ["ROWS", "DEPTH_COLUMNS", "depth_rows", "depth_tables"]

#: row -> label in the tables, in table order († marks the rows tuned on validation data)
ROWS: "OrderedDict[str, str]" = OrderedDict([
    ("bare", "bare (FusionBench setting)"),
    ("bare_tuned", "bare, global scale tuned †"),
    ("larv", "+ LARV (defaults)"),
    ("larv_rho0", "+ LARV, ρ = 0"),
    ("larv_depth_tiers", "+ LARV tiers by depth"),
    ("larv_tuned_tiers", "+ LARV, tiers tuned †"),
    ("lines", "LiNeS, β tuned †"),
    ("linear_ramp", "+ linear ramp 0.6→1.2"),
])
assert set(ROWS) == set(DEPTH_FIXED_ROWS) | set(DEPTH_TUNED_ROWS)

DEPTH_COLUMNS = ["backbone", "num_tasks", "merger", "row", "tuned", "key", "selected", "val_accuracy", "accuracy",
                 "delta_vs_bare", "score_depth_spearman", "run_dir"]


def _overrides(variant: Sequence[Tuple[str, str]]) -> str:
    return ";".join(sorted(f"{k}={v}" for k, v in variant))


def _tuned_key(row: str, merger: str) -> str:
    if row == "bare_tuned":
        return f"method.{MERGERS[merger].scale_key}"
    return "method.lines_beta" if row == "lines" else "method.tiers"


def _fixed_crit(row: str, merger: str) -> Dict[str, Any]:
    variant = DEPTH_FIXED_ROWS[row]
    if variant is None:
        return variant_crit(merger, False)
    if not variant:
        return variant_crit(merger, True)
    return dict(merger=merger, larv=True, method_overrides=_overrides(variant))


def _one(idx: Index, **crit) -> Optional[Dict[str, Any]]:
    hits = idx.find(task="average", **crit)
    return hits[0] if hits else None


def depth_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (backbone, task count, merger, depth row) with a finished test job."""
    idx = Index([r for r in rows if r["kind"] == "clip"])
    tuned_jobs = [r for r in idx.rows if r.get("tuned") and r["task"] == "average"]
    settings = sorted({(r["backbone"], r["num_tasks"]) for r in tuned_jobs}, key=setting_order)
    out = []
    for backbone, n in settings:
        base = dict(backbone=backbone, num_tasks=n)
        for merger in mergers_present(tuned_jobs, **base):
            bare = _one(idx, **base, **variant_crit(merger, False), split="test", tuned="")
            for row in ROWS:
                record: Dict[str, Any] = dict(backbone=backbone, num_tasks=n, merger=merger, row=row,
                                              tuned=row in DEPTH_TUNED_ROWS)
                if row in DEPTH_TUNED_ROWS:
                    hit = _one(idx, **base, merger=merger, tuned=row, split="test")
                    if hit is None:
                        continue
                    key = _tuned_key(row, merger)
                    picked = dict(o.split("=", 1) for o in hit["method_overrides"].split(";") if o)
                    val = _one(idx, **base, merger=merger, larv=hit["larv"], split="val",
                               method_overrides=hit["method_overrides"])
                    record.update(key=key, selected=picked.get(key, ""),
                                  val_accuracy=None if val is None else round(100 * float(val["accuracy"]), 2))
                else:
                    hit = _one(idx, **base, **_fixed_crit(row, merger), split="test", tuned="")
                    if hit is None:
                        continue
                acc = float(hit["accuracy"])
                record.update(accuracy=round(100 * acc, 2), run_dir=hit["run_dir"],
                              delta_vs_bare=None if bare is None else round(100 * (acc - float(bare["accuracy"])), 2),
                              score_depth_spearman=hit.get("score_depth_spearman"))
                out.append(record)
    return out


def _cell(record: Dict[str, Any]) -> str:
    text = f"{record['accuracy']:.1f}"
    if record["row"] != "bare" and record.get("delta_vs_bare") is not None:
        text += f" ({record['delta_vs_bare']:+.1f})"
    if record["tuned"]:
        name = {"method.lines_beta": "β", "method.tiers": "tiers"}.get(record["key"], "scale")
        val = record.get("val_accuracy")
        text += f" [{name} {record['selected']}; val {'—' if val is None else f'{val:.1f}'}]"
    return text


def depth_tables(records: Sequence[Dict[str, Any]]):
    """One :class:`~fusion_bench_larv.paper.render.Table` per (backbone, task count)."""
    out = []
    for backbone, n in sorted({(r["backbone"], r["num_tasks"]) for r in records}, key=setting_order):
        here = [r for r in records if r["backbone"] == backbone and r["num_tasks"] == n]
        mergers = [m for m in MERGERS if any(r["merger"] == m for r in here)]
        by = {(r["merger"], r["row"]): r for r in here}
        rows = [[label] + [_cell(by[(m, row)]) if (m, row) in by else "—" for m in mergers]
                for row, label in ROWS.items()]
        best_cells, rho_cells = [], []
        for m in mergers:
            ranked = sorted((r for r in here if r["merger"] == m), key=lambda r: -r["accuracy"])
            if not ranked:
                best_cells.append("—")
                continue
            lead = ranked[0]["accuracy"] - (ranked[1]["accuracy"] if len(ranked) > 1 else ranked[0]["accuracy"])
            delta = ranked[0].get("delta_vs_bare")
            best_cells.append(f"{ROWS[ranked[0]['row']].rstrip(' †')}: {'' if delta is None else f'{delta:+.1f} vs bare, '}"
                              f"+{lead:.1f} over the next")
            rho = [by.get((m, row), {}).get("score_depth_spearman") for row in ("larv", "larv_rho0")]
            rho_cells.append(" / ".join("—" if v in (None, "") else f"{float(v):.2f}" for v in rho))
        rows.append(["best on test"] + best_cells)
        rows.append(["Spearman(score, depth): defaults / ρ = 0"] + rho_cells)
        out.append(Table(
            f"depth_{backbone}_{n}".replace("/", "").replace(" ", ""),
            f"LARV vs depth priors, {backbone}, {n} tasks: test accuracy (%) (Δ vs bare, points)",
            ["Schedule"] + [merger_label(m) for m in mergers], rows,
            "† tuned: the value in brackets was chosen on the validation split (grid in docs/results.md), "
            "its validation accuracy follows; every other row uses fixed settings. The linear ramp is "
            f"`gate: linear_depth` ({_overrides(GATE_VARIANTS['linear_depth'])}), ours, on top of the merger's own "
            "scaling; LiNeS follows its published rule (scale 1, α = ||Σ τ_t||₁ / (T ||τ_merged||₁))."))
    return out
