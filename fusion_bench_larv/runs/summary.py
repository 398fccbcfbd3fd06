"""The sweep table: one row per job of a multirun, its Markdown and CSV, and its heatmap.

:class:`fusion_bench_larv.runs.sweep.LARVSweepCallback` records every job of a multirun in
``<job folder>/sweep_job.json`` and calls :func:`write_sweep_summary` after each job and at the
end: ``sweep_summary.csv`` and ``sweep_summary.md`` in the sweep folder (status, swept
overrides, per-task accuracy, average, Δ vs the baseline if one is given, the LARV keys used and
λ per block), and, when exactly two numeric ``method.*`` keys or two positions of
``method.tiers`` vary, ``sweep_heatmap.{png,pdf}`` (the paper's Figure 4). Reports and records are
read with :mod:`fusion_bench_larv.runs.reports`, the reader the paper lab uses too.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..atomic import atomic_write_bytes
from .locks import file_lock
from ..settings import SWEEP_KEYS as LARV_KEYS
from ..plots import save_figure
from .heatmap import tier_figure
from .reports import accuracies, overrides_to_dict, read_job, read_json, read_report, write_csv

log = logging.getLogger("fusion_bench_larv")

JOB_RECORD = "sweep_job.json"
SUMMARY_CSV, SUMMARY_MD, HEATMAP = "sweep_summary.csv", "sweep_summary.md", "sweep_heatmap"


# ----------------------------------------------------------------------------- reading
def _number(text: Any) -> Optional[float]:
    try:
        value = yaml.safe_load(text) if isinstance(text, str) else text
    except yaml.YAMLError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _number_list(text: Any) -> Optional[List[float]]:
    try:
        value = yaml.safe_load(text) if isinstance(text, str) else text
    except yaml.YAMLError:
        return None
    if not isinstance(value, list) or not value:
        return None
    numbers = [_number(v) for v in value]
    return None if any(v is None for v in numbers) else numbers


def _fmt(x: Optional[float], scale: float = 100.0, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{scale * x:+.2f}" if signed else f"{scale * x:.2f}"


def base_merger_label(record: Dict[str, Any]) -> str:
    """``ISO_C_Merge(scaling_factor=1.5, exclude_keys=None)`` from a LARV record: the merger as the
    run merged with it (LiNeS runs it at scale 1)."""
    base = dict(record.get("base_method_used") or record.get("base_method") or {})
    name = str(base.pop("_target_", "base merger")).rsplit(".", 1)[-1]
    return f"{name}({', '.join(f'{k}={v}' for k, v in base.items())})"


# ----------------------------------------------------------------------------- one run
def run_summary_lines(report: Dict[str, Any], record: Dict[str, Any], log_dir: Path,
                      report_path: Optional[Path]) -> List[str]:
    """The end-of-run summary of a LARV job, one string per line."""
    acc = accuracies(report)
    gate = record.get("gate")
    settings = record.get("gate_settings") or ({"tiers": record.get("tiers")} if gate == "tiered" else {})
    variant = f"gate={gate}" + "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}"
                                       for k, v in settings.items())
    if record.get("apply_used"):
        variant += f", apply={record.get('apply')}" + (f" (run as {record['apply_used']})"
                                                      if record["apply_used"] != record.get("apply") else "")
    lines = [f"LARV run summary: {base_merger_label(record)} + LARV ({variant})"]
    if "average" in acc:
        lines.append(f"  average accuracy: {_fmt(acc['average'])} %")
    lines += [f"    {task}: {_fmt(value)} %" for task, value in acc.items() if task != "average"]
    scales = [b.get("scale") for b in record.get("blocks", [])]
    lines.append(f"  λ per block (0..{len(scales) - 1}, shallow to deep): "
                 + " ".join(f"{s:g}" if isinstance(s, (int, float)) else "?" for s in scales))
    lines.append(f"  per-block record: {log_dir / 'larv_layers'}.{{json,csv,png}}")
    if report_path is not None:
        lines.append(f"  report: {report_path}")
    return lines


# ----------------------------------------------------------------------------- the sweep
def load_records(sweep_dir: Path) -> List[Dict[str, Any]]:
    """The job records of a sweep (``<sweep dir>/<subdir>/sweep_job.json``), by job number. A
    record that cannot be read (truncated, damaged) is a row with status ``unreadable record``
    naming the file, not a missing row."""
    records = []
    for path in Path(sweep_dir).glob(f"*/{JOB_RECORD}"):
        record = read_json(path, warn=True)
        if not isinstance(record, dict):
            name = path.parent.name
            record = {"job_num": int(name) if name.isdigit() else None, "status": "unreadable record",
                      "output_dir": str(path.parent), "error": f"{path} cannot be read as a job record"}
        records.append(record)
    return sorted(records, key=lambda r: (r.get("job_num") is None, r.get("job_num"), str(r.get("output_dir"))))


def _swept_keys(records: Sequence[Dict[str, Any]]) -> List[str]:
    parsed = [overrides_to_dict(r.get("overrides") or []) for r in records]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    if len(records) < 2:
        return keys
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def summary_rows(records: Sequence[Dict[str, Any]], baseline: Optional[Dict[str, float]] = None,
                 shared_log_dirs: Sequence[str] = ()) -> Tuple[List[Dict[str, Any]], List[str], List[str]]:
    """(rows, columns, swept keys) of the sweep table; accuracies as fractions, as reported.

    Jobs whose log dir another job of the sweep also wrote to get the status
    ``completed, shared log dir`` and no results: the report there is one of theirs, not known
    which."""
    swept = _swept_keys(records)
    rows, tasks = [], []
    for rec in records:
        ov = overrides_to_dict(rec.get("overrides") or [])
        row: Dict[str, Any] = {"job": rec.get("job_num"), "status": rec.get("status")}
        row.update({k: ov.get(k, "") for k in swept})
        acc: Dict[str, float] = {}
        job = None
        if rec.get("status") == "completed" and rec.get("log_dir") in shared_log_dirs:
            row["status"] = "completed, shared log dir"
        elif rec.get("status") == "completed":
            job = read_job(rec["log_dir"], report=rec["report"]) if rec.get("log_dir") and rec.get("report") else None
            report = job.report if job is not None else None
            acc = accuracies(report)
            if report is None:
                row["status"] = "completed, no report"
        for task in acc:
            if task != "average" and task not in tasks:
                tasks.append(task)
        row.update(acc)
        if baseline:
            for task, value in acc.items():
                if task in baseline:
                    row[f"delta_{task}"] = value - baseline[task]
        record = job.record if job is not None and rec.get("larv") else None
        if row["status"] == "completed" and record is not None:
            row["base_merger"] = base_merger_label(record)
            row.update({f"larv.{k}": json.dumps(v) if isinstance(v, list) else v
                        for k, v in ((k, record.get(k)) for k in LARV_KEYS)})
            row["scales"] = " ".join(f"{b.get('scale'):g}" for b in record.get("blocks", []))
        row.update(overrides=" ".join(rec.get("overrides") or []), log_dir=rec.get("log_dir") or "",
                   error=rec.get("error") or "")
        rows.append(row)
    columns = ["job", "status", *swept, *tasks, "average"]
    if baseline:
        columns += [f"delta_{t}" for t in tasks] + ["delta_average"]
    columns += ["base_merger", *(f"larv.{k}" for k in LARV_KEYS), "scales", "overrides", "log_dir", "error"]
    return rows, columns, swept


def heatmap_grid(rows: Sequence[Dict[str, Any]], swept: Sequence[str], delta: bool):
    """``(ylabel, xlabel, ys, xs, matrix)`` when exactly two numeric ``method.*`` keys or two
    positions of ``method.tiers`` vary, else ``None``. Cells: the average accuracy (%), or Δ vs
    the baseline (points) with ``delta``; ``None`` where a job failed or is missing."""
    if not rows:
        return None
    if list(swept) == ["method.tiers"]:
        tiers = [_number_list(r["method.tiers"]) for r in rows]
        if any(t is None for t in tiers) or len({len(t) for t in tiers}) != 1:
            return None
        varying = [i for i in range(len(tiers[0])) if len({t[i] for t in tiers}) > 1]
        if len(varying) != 2:
            return None
        (i, j) = varying
        coords = [(t[i], t[j]) for t in tiers]
        ylabel, xlabel = f"method.tiers[{i}]", f"method.tiers[{j}]"
    elif len(swept) == 2 and all(k.startswith("method.") for k in swept):
        coords = [(_number(r[swept[0]]), _number(r[swept[1]])) for r in rows]
        if any(y is None or x is None for y, x in coords):
            return None
        ylabel, xlabel = swept
    else:
        return None
    key = "delta_average" if delta else "average"
    ys, xs = sorted({y for y, _ in coords}), sorted({x for _, x in coords})
    matrix: List[List[Optional[float]]] = [[None] * len(xs) for _ in ys]
    for (y, x), row in zip(coords, rows):
        value = row.get(key)
        matrix[ys.index(y)][xs.index(x)] = None if value is None else 100.0 * value
    return ylabel, xlabel, ys, xs, matrix


def markdown_table(rows: Sequence[Dict[str, Any]], swept: Sequence[str], baseline_avg: Optional[float]) -> List[str]:
    """The sweep table as Markdown lines: job, status, swept keys, accuracy (%) per task and
    average, Δ average (points) with a baseline, λ per block."""
    tasks = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("job", "status", "average")
             and not k.startswith(("delta_", "larv.")) and k not in swept
             and k not in ("base_merger", "scales", "overrides", "log_dir", "error")]
    header = ["job", "status", *swept, *tasks, "average"] + (["Δ average"] if baseline_avg is not None else []) + ["λ per block"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 + len(swept) else "---:"
                                                              for i in range(len(header))) + "|"]
    for r in rows:
        cells = [str(r.get("job")), str(r.get("status"))] + [str(r.get(k, "")) for k in swept]
        cells += [_fmt(r.get(t)) for t in tasks] + [_fmt(r.get("average"))]
        if baseline_avg is not None:
            cells.append(_fmt(r.get("delta_average"), signed=True))
        cells.append(str(r.get("scales", "")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_sweep_summary(sweep_dir: str | os.PathLike, baseline: Optional[str] = None) -> Dict[str, Any]:
    """(Re)write sweep_summary.{csv,md} and, where the grid allows, sweep_heatmap.{png,pdf}.

    Returns ``{"rows", "columns", "swept", "baseline", "heatmap", "markdown", "paths"}``.
    """
    sweep_dir = Path(sweep_dir)
    base_acc = accuracies(read_report(baseline)) if baseline else None
    with file_lock(sweep_dir / ".sweep_summary.lock"):  # jobs of a parallel launcher end concurrently
        records = load_records(sweep_dir)
        shared: Dict[str, List[Any]] = {}
        for rec in records:
            if rec.get("log_dir"):
                shared.setdefault(rec["log_dir"], []).append(rec.get("job_num"))
        for log_dir, jobs in shared.items():
            if len(jobs) > 1:
                log.warning("Jobs %s share path.log_dir=%s: each overwrote the previous one's report, so their "
                            "results are not shown. Drop the path.log_dir override, or make it differ per job.",
                            jobs, log_dir)
        rows, columns, swept = summary_rows(records, base_acc, {d for d, jobs in shared.items() if len(jobs) > 1})
        base_avg = (base_acc or {}).get("average")
        done = sum(r["status"] == "completed" for r in rows)
        failed = sum(r["status"] == "failed" for r in rows)
        md = [f"# Sweep summary: {sweep_dir}", "",
              f"{len(rows)} jobs: {done} completed, {failed} failed. Accuracy in %"
              + (f"; Δ in points vs the baseline {baseline} (average {_fmt(base_avg)} %)." if base_acc else
                 "; no baseline (hydra.callbacks.larv_sweep.baseline=<report>)."), ""]
        md += markdown_table(rows, swept, base_avg if base_acc else None)
        paths = [sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD]
        write_csv(paths[0], rows, columns)
        atomic_write_bytes(paths[1], ("\n".join(md) + "\n").encode())
        grid = heatmap_grid(rows, swept, delta=bool(base_acc))
        heatmap = None
        if grid is not None:
            heatmap = save_heatmap(grid, sweep_dir, delta=bool(base_acc), baseline=baseline)
            paths += heatmap["paths"]
    return dict(rows=rows, columns=columns, swept=swept, baseline=base_acc, heatmap=heatmap, markdown=md, paths=paths)


def save_heatmap(grid, out: Path, delta: bool, baseline: Optional[str]) -> Dict[str, Any]:
    """Draw the grid with :func:`fusion_bench_larv.runs.heatmap.tier_figure` (the Figure 4 heatmap)
    and save it; the PNG's ``larv_heatmap`` text chunk holds the matrix read back from the
    figure's image."""
    import numpy as np

    ylabel, xlabel, ys, xs, matrix = grid
    quantity = "Δ average accuracy vs baseline (points)" if delta else "average accuracy (%)"
    fig = tier_figure(ys, xs, matrix, quantity, ylabel=ylabel, xlabel=xlabel,
                      value_label="Δ accuracy (points)" if delta else "accuracy (%)", centered=delta)
    drawn = np.ma.filled(np.ma.asarray(fig.axes[0].images[0].get_array(), dtype=float), np.nan)
    data = {"rows": ylabel, "columns": xlabel, "row_values": ys, "column_values": xs, "quantity": quantity,
            "baseline": baseline, "values": [[None if not math.isfinite(v) else float(v) for v in line] for line in drawn]}
    paths = save_figure(fig, out, HEATMAP, png_metadata={"larv_heatmap": json.dumps(data)})
    return dict(data, paths=paths)
