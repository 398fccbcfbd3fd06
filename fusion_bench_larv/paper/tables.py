"""Paper-style tables of the lab's results (Markdown and LaTeX), with the CSVs and figures.

Input: the job tree of ``reproduce-larv`` (read by :mod:`fusion_bench_larv.paper.collect`).
Output (``--out``):

* ``results.csv``: one row per (job, task) with the task's score and loss (fractions, as FusionBench
  reports them) and the job's labels; the pool's ``average`` is the row ``task == "average"``. The
  score (``accuracy``) is the accuracy, or what ``metric`` says: Spearman's ρ (``spearman_rho``,
  STS-B) or the GLUE pool's average ``score``. Jobs without evaluation have no rows here.
* ``larv_blocks.csv``: one row per (LARV job, block) with e, c, z, s, tier and scale.
* ``summary.csv``: one row per evaluated CLIP merge job on test with given settings (bare, or
  LARV with any gate/tiers): average accuracy, Δ vs the bare merger, normalized accuracy and its
  Δ (percent / points), and a LARV job's rank correlation of its scores with depth.
* ``depth.csv`` (``reproduce-larv depth``): one row per (setting, merger, schedule) of the
  depth-prior comparison, tuned rows with their selected value and validation accuracy
  (:mod:`fusion_bench_larv.paper.depth`). Validation jobs are in ``results.csv`` only
  (``split == "val"``); no other table reads them.
* ``tables.md`` and ``tables.tex``: the paper's layout. Rows are mergers, each followed by its
  "+ LARV" row showing the accuracy and, in parentheses, Δ = LARV − bare in percentage points;
  columns are backbones (main table) or backbone × task count (14/20-task table). Further
  tables: normalized accuracy (accuracy / the individual fine-tuned model's accuracy on the same
  task, averaged over tasks; needs the ``individual`` experiment), gate ablation, tier grid,
  corruption robustness, generalization (seen / unseen tasks), Flan-T5 LoRA GLUE.
* Figures (PNG and PDF): ``fig_diagnostics`` (e, c, s per block, one line per merger, one row
  per backbone: the paper's Figure 2), ``fig_tiers`` (Δ accuracy heatmap over middle × deep tier
  values, colour map centred at 0: Figure 4), ``fig_corruption`` (bare vs +LARV bars per
  corruption and their average, after the clean split where it was run: Figure 3) and
  ``fig_corruption_delta`` (Δ accuracy over tasks × corruptions, one panel per merger, colour map
  centred at 0: Figure 5); one pair per backbone, suffixed with it when there are several.

Missing runs are shown as "—" and listed in a warning; no number is ever filled in or
interpolated. Accuracies in tables are percentages with one decimal; a score the task pool
reported as NaN (STS-B's ρ on constant predictions) is shown as "NaN", never averaged in.

Usage: ``make-larv-tables outputs/larv --out outputs/larv/tables``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..atomic import atomic_write_text
from ..runs.reports import write_csv
from ..plots import MISSING, save_figure
from ..runs.heatmap import tier_figure, tier_label
from .collect import (BLOCK_COLUMNS, RESULT_COLUMNS, SUMMARY_COLUMNS, Index, block_rows, collect, individual_average,
                      merger_label, mergers_present, normalized_value, setting_order, summary_rows, tidy_rows,
                      variant_crit)
from .labels import BACKBONE_ORDER, CORRUPTION_LABELS, generalization_seen, norm_task
from .depth import DEPTH_COLUMNS, depth_rows, depth_tables
from .experiments import CLEAN, CORRUPTIONS, DEFAULT_GATE_VARIANT, GATE_VARIANTS
from .figures import corruption_delta_figure, corruption_figure, diagnostics_figure, main_figure
from .render import Table, latex_escape, pct, pct_delta, slug, to_latex, to_markdown  # noqa: F401 (re-exported)

log = logging.getLogger("fusion_bench_larv.paper.tables")


def reference_rows(idx: Index, key: str, columns: Sequence[Tuple[str, Dict[str, Any]]],
                   normalized: bool = False) -> List[List[str]]:
    """The paper's first rows, where their jobs exist: zero-shot and, for accuracy tables, the
    individual fine-tuned models (each on its own task, averaged over the column's tasks); only
    for columns that are a backbone and a task count."""
    rows = []
    if not all("backbone" in crit and "num_tasks" in crit for _, crit in columns):
        return rows
    if any(r["kind"] == "zeroshot" for r in idx.rows):
        cells = []
        for col_label, crit in columns:
            zs = dict(kind="zeroshot", backbone=crit["backbone"], num_tasks=crit["num_tasks"])
            what = f"{key}: zero-shot @ {col_label}"
            cells.append(pct(normalized_value(idx, what, zs) if normalized else idx.value(what, **zs)))
        rows.append(["Pretrained (zero-shot)"] + cells)
    if not normalized and any(r["kind"] == "individual" for r in idx.rows):
        cells = [pct(individual_average(idx, f"{key}: individual @ {col_label}", crit)) for col_label, crit in columns]
        rows.append(["Individual fine-tuned"] + cells)
    return rows


def paired_table(idx: Index, key: str, title: str, columns: Sequence[Tuple[str, Dict[str, Any]]],
                 mergers: Sequence[str], task: str = "average", value_fn=None, note: str = "",
                 normalized: bool = False) -> Table:
    """Rows: the reference rows (zero-shot, individual), then each merger followed by "+ LARV"
    with Δ in points; columns: labelled criteria."""
    value_fn = value_fn or (lambda what, crit: idx.value(what, task=task, **crit))
    rows = reference_rows(idx, key, columns, normalized) if task == "average" else []
    for m in mergers:
        bare, larv = [], []
        for col_label, crit in columns:
            b = value_fn(f"{key}: {merger_label(m)} bare @ {col_label}", {**crit, **variant_crit(m, False)})
            lv = value_fn(f"{key}: {merger_label(m)} +LARV @ {col_label}", {**crit, **variant_crit(m, True)})
            bare.append(pct(b))
            larv.append(pct_delta(lv, b))
        rows.append([merger_label(m)] + bare)
        rows.append(["+ LARV"] + larv)
    return Table(key, title, ["Method"] + [c for c, _ in columns], rows, note)


def build_tables(rows: Sequence[Dict[str, Any]]) -> Tuple[List[Table], List[str]]:
    """Every table for which at least one job exists; returns (tables, missing cells)."""
    idx = Index(rows)
    tables: List[Table] = []
    clip = [r for r in rows if r["kind"] == "clip"]
    # main table (8 tasks) and its normalized version
    backbones8 = [b for b in BACKBONE_ORDER if any(r["backbone"] == b and r["num_tasks"] == 8 for r in clip)]
    if backbones8:
        cols = [(b, dict(kind="clip", backbone=b, num_tasks=8)) for b in backbones8]
        mergers = mergers_present(clip, num_tasks=8)
        tables.append(paired_table(idx, "main", "Average accuracy (%), 8 tasks; + LARV: accuracy (Δ vs bare, points)",
                                   cols, mergers))
        if any(r["kind"] == "individual" for r in rows):
            tables.append(paired_table(idx, "normalized", "Normalized accuracy (%), 8 tasks: accuracy / individual "
                                       "fine-tuned accuracy, averaged over tasks", cols, mergers, normalized=True,
                                       value_fn=lambda what, crit: normalized_value(idx, what, crit)))
    # 14/20-task table (with 8 for reference)
    settings = sorted({(r["backbone"], r["num_tasks"]) for r in clip if r["num_tasks"] in (14, 20)},
                      key=setting_order)
    if settings:
        cols = []
        for b in dict.fromkeys(s[0] for s in settings):
            for n in (8, 14, 20):
                if any(r["backbone"] == b and r["num_tasks"] == n for r in clip):
                    cols.append((f"{b} ({n})", dict(kind="clip", backbone=b, num_tasks=n)))
        tables.append(paired_table(idx, "tall", "Average accuracy (%) by number of tasks; + LARV: accuracy (Δ, points)",
                                   cols, mergers_present(clip)))
        if any(r["kind"] == "individual" for r in rows):
            tables.append(paired_table(idx, "normalized_tall", "Normalized accuracy (%) by number of tasks",
                                       cols, mergers_present(clip), normalized=True,
                                       value_fn=lambda what, crit: normalized_value(idx, what, crit)))
    tables += _gate_tables(idx, clip)
    tables += _tier_tables(idx, clip)
    tables += _robustness_tables(idx, rows)
    tables += _generalization_tables(idx, rows)
    tables += _nlp_tables(idx, rows)
    return tables, list(dict.fromkeys(idx.missing))


def _gate_overrides(variant: str) -> str:
    return ";".join(sorted(f"{k}={v}" for k, v in GATE_VARIANTS[variant]))


def _override_keys(row: Dict[str, Any]) -> set:
    return {o.split("=", 1)[0] for o in str(row.get("method_overrides") or "").split(";") if o}


def _gate_tables(idx: Index, clip: Sequence[Dict[str, Any]]) -> List[Table]:
    """Per (backbone, task count): rows bare + each gate variant, columns mergers; accuracy with
    Δ vs bare and, where the individual fine-tuned models were evaluated, normalized accuracy."""
    wanted = {_gate_overrides(g) for g in GATE_VARIANTS}
    ablation = [r for r in clip if r["larv"] and r["method_overrides"] in wanted]
    if not ablation:
        return []
    metrics = [("", "accuracy (%)", lambda what, crit: idx.value(what, task="average", **crit))]
    if any(r["kind"] == "individual" for r in idx.rows):
        metrics.append(("normalized_", "normalized accuracy (%: accuracy / individual fine-tuned, averaged over "
                        "tasks)", lambda what, crit: normalized_value(idx, what, crit)))
    out = []
    for b, n in sorted({(r["backbone"], r["num_tasks"]) for r in ablation}, key=setting_order):
        mergers = mergers_present(ablation, backbone=b, num_tasks=n)
        base = dict(kind="clip", backbone=b, num_tasks=n)
        for key_prefix, what_label, value in metrics:
            bare = {m: value(f"gates: {key_prefix}{merger_label(m)} bare @ {b} ({n})", {**base, **variant_crit(m, False)})
                    for m in mergers}
            rows = [["bare"] + [pct(bare[m]) for m in mergers]]
            defaults_used = False
            for g in GATE_VARIANTS:
                cells = []
                for m in mergers:
                    crit = dict(**base, merger=m, larv=True, method_overrides=_gate_overrides(g))
                    if g == DEFAULT_GATE_VARIANT and not idx.find(task="average", **crit):
                        # the same configuration run without overrides (the main table's +LARV job)
                        crit = dict(**base, **variant_crit(m, True))
                        defaults_used = defaults_used or bool(idx.find(task="average", **crit))
                    cells.append(pct_delta(value(f"gates: {key_prefix}{merger_label(m)} {g} @ {b} ({n})", crit), bare[m]))
                rows.append([g] + cells)
            note = (f"{DEFAULT_GATE_VARIANT} is the shipped defaults; where no job spelled it out, the row shows the "
                    "`larv_*` job without overrides (the same configuration)." if defaults_used else "")
            out.append(Table(f"gates_{key_prefix}{slug(b)}_{n}",
                             f"Gate ablation, {b}, {n} tasks: {what_label} (Δ vs bare, points)",
                             ["Gate"] + [merger_label(m) for m in mergers], rows, note))
    return out


def tier_grid(idx: Index, rows: Sequence[Dict[str, Any]], backbone: str, num_tasks: int, merger: str):
    """(mid values, deep values, Δ matrix in points or None, shallow values) of the tier grid."""
    base = dict(kind="clip", backbone=backbone, num_tasks=num_tasks, merger=merger)
    # the tier experiment's jobs override exactly method.gate (tiered) and method.tiers (3 levels)
    grid_rows = [r for r in rows if all(r.get(k) == v for k, v in base.items()) and r["larv"]
                 and r["task"] == "average" and r["gate"] == "tiered3"
                 and _override_keys(r) == {"method.gate", "method.tiers"}]
    # the tiers column holds "shallow/middle/deep"
    parsed = [(tuple(float(x) for x in r["tiers"].split("/")), float(r["accuracy"])) for r in grid_rows]
    if not parsed:
        return None
    mids = sorted({t[1] for t, _ in parsed})
    deeps = sorted({t[2] for t, _ in parsed})
    shallow = sorted({t[0] for t, _ in parsed})
    bare = idx.value(f"tiers: {merger_label(merger)} bare @ {backbone}", task="average", **base, **{
        k: v for k, v in variant_crit(merger, False).items() if k != "merger"})
    acc = {(t[1], t[2]): a for t, a in parsed}
    matrix = [[(None if (m, d) not in acc or bare is None else 100 * (acc[(m, d)] - bare)) for d in deeps] for m in mids]
    return mids, deeps, matrix, shallow, bare


def _tier_tables(idx: Index, clip: Sequence[Dict[str, Any]]) -> List[Table]:
    out = []
    keys = sorted({(r["backbone"], r["num_tasks"], r["merger"]) for r in clip if r["larv"]
                   and _override_keys(r) == {"method.gate", "method.tiers"}}, key=str)
    for b, n, m in keys:
        grid = tier_grid(idx, clip, b, n, m)
        if grid is None:
            continue
        mids, deeps, matrix, shallow, bare = grid
        if len(mids) * len(deeps) < 2:
            continue
        rows = [[tier_label(mid)] + [MISSING if v is None else f"{v:+.1f}" for v in line] for mid, line in zip(mids, matrix)]
        out.append(Table(f"tiers_{slug(b)}_{n}_{m}", f"Tier sensitivity, {merger_label(m)} on {b}, {n} tasks: Δ accuracy "
                         f"(points) vs bare ({pct(bare)}%); shallow tier {'/'.join(tier_label(s) for s in shallow)}",
                         ["middle \\ deep"] + [tier_label(d) for d in deeps], rows))
    return out


def robustness_splits(rob: Sequence[Dict[str, Any]]) -> List[str]:
    """The splits present among robustness rows: clean first, then the corruptions in the paper's order."""
    return [c for c in (CLEAN, *CORRUPTIONS) if any(r["corruption"] == c for r in rob)]


def robustness_reference(idx: Index, what: str, merger: str, crit: Dict[str, Any]) -> Optional[float]:
    """Average accuracy on one split of a robustness pool's reference jobs: the pretrained model
    (``zeroshot``), or each fine-tuned tower alone on its own task (``individual``, averaged)."""
    if merger == "zeroshot":
        return idx.value(what, task="average", merger="zeroshot", **crit)
    jobs = idx.find(merger="individual", **crit)
    tasks = sorted({r["task"] for r in jobs if r["task"] != "average"})
    vals = [idx.value(f"{what} ({t})", task=t, merger="individual", individual_task=lambda v, t=t: norm_task(v) == norm_task(t),
                      **crit) for t in tasks]
    if not vals or any(v is None for v in vals):
        idx.missing.append(what)
        return None
    return sum(vals) / len(vals)


def _robustness_tables(idx: Index, rows: Sequence[Dict[str, Any]]) -> List[Table]:
    """Per backbone: rows zero-shot and individual (where run), then each merger and + LARV;
    columns the clean split (offline suite), each corruption and the average over the corruptions."""
    out = []
    for b in sorted({r["backbone"] for r in rows if r["kind"] == "robustness"}, key=lambda b: setting_order((b, 0))):
        rob = [r for r in rows if r["kind"] == "robustness" and r["backbone"] == b]
        splits = robustness_splits(rob)
        corrs = [c for c in splits if c != CLEAN]
        base = dict(kind="robustness", backbone=b)

        def value(what, crit, reference=None):
            if "corruption" not in crit:  # the average over the corruptions
                vals = [value(f"{what} [{c}]", {**crit, "corruption": c}, reference) for c in corrs]
                return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)
            if reference:
                return robustness_reference(idx, what, reference, crit)
            return idx.value(what, task="average", **crit)

        cols = [(CORRUPTION_LABELS[c], dict(base, corruption=c)) for c in splits] + [("Avg.", dict(base))]
        merges = [r for r in rob if r["merger"] not in ("zeroshot", "individual")]
        table = paired_table(idx, f"robustness_{slug(b)}", f"Corruption robustness, {b} on "
                             f"{', '.join(robustness_tasks(rob))}: average accuracy (%) per test split (Δ vs bare, "
                             "points); Avg.: mean over the corruptions", cols, mergers_present(merges), value_fn=value)
        for label, ref in (("Individual fine-tuned", "individual"), ("Pretrained (zero-shot)", "zeroshot")):
            if any(r["merger"] == ref for r in rob):
                table.rows.insert(0, [label] + [pct(value(f"robustness: {ref} @ {c}", crit, ref)) for c, crit in cols])
        out.append(table)
    return out


def robustness_tasks(rob: Sequence[Dict[str, Any]]) -> List[str]:
    return list(dict.fromkeys(r["task"] for r in rob if r["task"] != "average" and r["merger"] != "individual"))


def _generalization_tables(idx: Index, rows: Sequence[Dict[str, Any]]) -> List[Table]:
    """Per backbone: average accuracy on the tasks seen while merging and on the unseen ones, per
    experiment; a zero-shot row (the pretrained model on the same tasks) where its 8-task job exists."""
    out = []
    for b in sorted({r["backbone"] for r in rows if r["kind"] == "generalization"}, key=lambda b: setting_order((b, 0))):
        gen = [r for r in rows if r["kind"] == "generalization" and r["backbone"] == b]

        def split_fn(what, crit):
            crit = dict(crit)
            exp, part = crit.pop("_exp"), crit.pop("_part")
            if crit.get("kind") == "zeroshot":
                hits = [r for r in idx.find(**crit) if r["task"] != "average"]
            else:
                hits = [r for r in idx.find(**crit, setting=exp) if r["task"] != "average"]
            vals = [float(r["accuracy"]) for r in hits if generalization_seen(b, exp, r["task"]) == (part == "seen")]
            if not vals:
                idx.missing.append(what)
                return None
            return sum(vals) / len(vals)

        parts = [(exp, part) for exp in ("exp1", "exp2") if any(r["setting"] == exp for r in gen) for part in ("seen", "unseen")]
        cols = [(f"{exp} {part}", dict(kind="generalization", backbone=b, _exp=exp, _part=part)) for exp, part in parts]
        table = paired_table(idx, f"generalization_{slug(b)}", f"Generalization, {b}: average accuracy (%) on the "
                             "tasks seen while merging and on unseen tasks (Δ vs bare, points)", cols,
                             mergers_present(gen), value_fn=split_fn)
        if any(r["kind"] == "zeroshot" and r["backbone"] == b and r["num_tasks"] == 8 for r in rows):
            table.rows.insert(0, ["Pretrained (zero-shot)"] + [
                pct(split_fn(f"generalization: zero-shot @ {b} {exp} {part}",
                             dict(kind="zeroshot", backbone=b, num_tasks=8, _exp=exp, _part=part))) for exp, part in parts])
        out.append(table)
    return out


def _nlp_tables(idx: Index, rows: Sequence[Dict[str, Any]]) -> List[Table]:
    nlp = [r for r in rows if r["kind"] == "nlp"]
    if not nlp:
        return []
    tasks = list(dict.fromkeys(r["task"] for r in nlp if r["task"] != "average"))

    def fn(what, crit):
        crit = dict(crit)
        task = crit.pop("_task")
        if task == "average" and not idx.find(task="average", **crit):
            # FusionBench's GLUE pool reports no average: the mean over the tasks with a score
            vals = [idx.value(f"{what} [{t}]", task=t, **crit) for t in tasks]
            if any(v is None for v in vals):
                return None
            scored = [v for v in vals if not math.isnan(v)]
            return sum(scored) / len(scored) if scored else float("nan")
        return idx.value(what, task=task, **crit)

    cols = [(t, dict(kind="nlp", _task=t)) for t in tasks] + [("Avg.", dict(kind="nlp", _task="average"))]
    metrics = {r["task"]: r["metric"] for r in nlp if r["task"] != "average"}
    rho = [t for t in tasks if metrics.get(t) == "spearman_rho"]
    title = "Flan-T5-base LoRA-16 on GLUE: accuracy (%)"
    if rho:
        title += f"; {', '.join(rho)}: Spearman's ρ × 100"
    title += " (Δ vs bare, points). Avg.: mean over the tasks with a score; NaN: no score (constant predictions)"
    return [paired_table(idx, "nlp", title, cols, mergers_present(nlp), value_fn=fn)]


def make_tables(root: str | os.PathLike, out: str | os.PathLike) -> Dict[str, Any]:
    """Collect, write the CSVs, tables and figures; return what was written and what is missing."""
    (out := Path(out)).mkdir(parents=True, exist_ok=True)
    runs = collect(root)
    all_rows = tidy_rows(runs)
    # validation jobs and the rows tuned on them appear only in the depth comparison
    rows = [r for r in all_rows if r["split"] == "test" and not r["tuned"]]
    blocks = block_rows([run for run in runs if run.labels["split"] == "test" and not run.labels["tuned"]])
    write_csv(out / "results.csv", all_rows, RESULT_COLUMNS)
    write_csv(out / "larv_blocks.csv", blocks, BLOCK_COLUMNS)
    write_csv(out / "summary.csv", summary_rows(rows), SUMMARY_COLUMNS)
    depth = depth_rows(all_rows)
    if depth:  # reproduce-larv depth's rows
        write_csv(out / "depth.csv", depth, DEPTH_COLUMNS)
    tables, missing = build_tables(rows)
    tables += depth_tables(depth)
    md = ["# LARV results", "", f"Collected {len(runs)} job reports. Missing cells: {MISSING}.", ""] + [to_markdown(t) for t in tables]
    atomic_write_text(out / "tables.md", "\n".join(md))
    atomic_write_text(out / "tables.tex", "% LARV results (generated by make-larv-tables)\n" + "\n".join(to_latex(t) for t in tables))
    figures: Dict[str, List[Path]] = {}
    fig = diagnostics_figure(blocks) if blocks else None
    if fig is not None:
        figures["fig_diagnostics"] = save_figure(fig, out, "fig_diagnostics")
    idx = Index(rows)
    for t in tables:
        if t.key.startswith("tiers_"):
            _, b, n, m = t.key.split("_", 3)
            bb = next(x for x in {r["backbone"] for r in rows} if slug(x) == b)
            grid = tier_grid(idx, rows, bb, int(n), m)
            if grid:
                mids, deeps, matrix, _, _ = grid
                figures[f"fig_{t.key}"] = save_figure(tier_figure(mids, deeps, matrix, t.title), out, f"fig_{t.key}")
    fig = main_figure(rows)
    if fig is not None:
        figures["fig_main"] = save_figure(fig, out, "fig_main")
    rob_backbones = sorted({r["backbone"] for r in rows if r["kind"] == "robustness"}, key=lambda b: setting_order((b, 0)))
    for b in rob_backbones:
        suffix = "" if len(rob_backbones) == 1 else f"_{slug(b)}"
        for name, draw in (("fig_corruption", corruption_figure), ("fig_corruption_delta", corruption_delta_figure)):
            fig = draw(rows, b)
            if fig is not None:
                figures[name + suffix] = save_figure(fig, out, name + suffix)
    if missing:
        log.warning("%d table cells have no finished job (shown as %s): %s", len(missing), MISSING,
                    "; ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    return dict(runs=len(runs), rows=len(rows), tables=[t.key for t in tables], figures=figures, missing=missing)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``make-larv-tables`` / ``scripts/make_tables.py``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="make-larv-tables", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder with the job folders (reproduce-larv --output)")
    p.add_argument("--out", default=None, help="where to write CSV/tables/figures (default: <root>/tables)")
    args = p.parse_args(argv)
    result = make_tables(args.root, args.out or os.path.join(args.root, "tables"))
    log.info("%d jobs, %d CSV rows, tables: %s, figures: %s", result["runs"], result["rows"],
             ", ".join(result["tables"]) or "none", ", ".join(result["figures"]) or "none")
    return 0
