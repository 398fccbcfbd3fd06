"""Hydra glue for every ``fusion_bench`` call composed from this package's primary config.

``config/fabric_model_fusion.yaml`` (FusionBench's primary config, which our search-path plugin
puts in front of FusionBench's own) adds two things to FusionBench's defaults:

1. **One log dir per multirun job.** ``path.log_dir`` is ``${larv.job_log_dir:<FusionBench's
   default>}``. The resolver returns the job's own Hydra folder (``hydra.sweep.dir`` /
   ``hydra.sweep.subdir``: ``outputs/multirun/fabric_model_fusion/<time>/0``, ``1``, ...) inside a
   multirun, and FusionBench's default (``outputs/fabric_model_fusion/<time>``) in a single run.
   FusionBench's own default gives every job of a sweep the same folder, so each job's
   ``program_report.json`` would overwrite the previous one. An explicit ``path.log_dir=...``
   (as ``reproduce-larv`` passes) always wins.
2. **The callback** :class:`LARVSweepCallback` (``hydra.callbacks.larv_sweep``):

   - after every job that ran a LARV method: a short summary through ``logging`` (base merger,
     average and per-task accuracy, λ per block, where ``larv_layers.{json,csv,png}`` went);
   - in a multirun, after every job and at the end: ``sweep_summary.csv`` and
     ``sweep_summary.md`` in the sweep dir, one row per job (status, swept overrides, per-task
     accuracy, average, Δ vs the baseline if one is given, the LARV keys used and λ per block);
     failed jobs are rows with status ``failed`` and the error. The table is rewritten after each
     job because Hydra stops a sweep whose job failed without calling ``on_multirun_end``.
   - when exactly two numeric ``method.*`` keys, or two positions of ``method.tiers``, vary
     across the sweep: ``sweep_heatmap.png`` / ``.pdf`` of the average accuracy (%) over that
     grid, or of Δ vs the baseline (points, colour map centred at 0: the paper's Figure 4). The
     PNG carries the matrix it shows as JSON in its ``larv_heatmap`` text chunk.

One sweep per sweep folder: the callback holds ``<sweep dir>/.larv_sweep.lock`` (an ``fcntl``
lock, gone with its process) from the sweep's start to its end, so a second sweep given the same
``hydra.sweep.dir`` (or started in the same second with the default one) stops before any job
runs, instead of overwriting the first one's job folders and mixing their rows.

Baseline: ``hydra.callbacks.larv_sweep.baseline=<report>`` names a finished run's
``program_report.json`` (or its folder), typically the bare merger, or LARV with
``method.gate=identity``, which reproduces the bare merger bit for bit. Hydra's cartesian
product cannot sweep ``method=iso_c`` together with ``method.tiers=...``, so the baseline is a run
of its own. A baseline that cannot be read fails the sweep before any job runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf

from .atomic import atomic_write_bytes
from .locks import LockBusy, file_lock, try_file_lock
from .job_reports import REPORT_NAME, accuracies, overrides_to_dict, read_json, read_report
from .plots import save_figure, tier_figure

try:  # Hydra is always there under `fusion_bench`; keep the module importable without it
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object

log = logging.getLogger("fusion_bench_larv")

RESOLVER = "larv.job_log_dir"
JOB_RECORD = "sweep_job.json"
SWEEP_LOCK = ".larv_sweep.lock"
SUMMARY_CSV, SUMMARY_MD, HEATMAP = "sweep_summary.csv", "sweep_summary.md", "sweep_heatmap"
#: LARV hyperparameters shown per job (from its larv_layers.json)
LARV_KEYS = ("gate", "tiers", "tier_assignment", "eta", "rho", "conflict", "source", "apply", "non_block_scale",
             "amplitude", "steepness", "min_scale", "max_scale", "lines_alpha", "lines_beta")


# ----------------------------------------------------------------------------- the log dir
def job_log_dir(default: str) -> str:
    """``path.log_dir``: the job's Hydra output folder inside a multirun, else ``default``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            out = OmegaConf.select(hc, "runtime.output_dir", default=None)
            if out:
                return str(out)
    return default


def register_resolvers() -> None:
    """Register ``${larv.job_log_dir:...}`` (idempotent). Runs when this module is imported:
    by the search-path plugin (every Hydra start) and wherever Hydra unpickles the callback
    (joblib / submitit workers)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_log_dir)


register_resolvers()


# ----------------------------------------------------------------------------- reading
def _parse_overrides(overrides: Sequence[str]) -> Dict[str, str]:
    return overrides_to_dict(overrides)


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
    parsed = [_parse_overrides(r.get("overrides") or []) for r in records]
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
        ov = _parse_overrides(rec.get("overrides") or [])
        row: Dict[str, Any] = {"job": rec.get("job_num"), "status": rec.get("status")}
        row.update({k: ov.get(k, "") for k in swept})
        acc: Dict[str, float] = {}
        if rec.get("status") == "completed" and rec.get("log_dir") in shared_log_dirs:
            row["status"] = "completed, shared log dir"
        elif rec.get("status") == "completed":
            report = read_report(rec["report"]) if rec.get("report") else None
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
        record = read_json(Path(rec["log_dir"]) / "larv_layers.json") if rec.get("larv") and rec.get("log_dir") else None
        if row["status"] == "completed" and isinstance(record, dict):
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


def _csv_text(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buffer.getvalue()


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
        atomic_write_bytes(paths[0], _csv_text(rows, columns).encode())
        atomic_write_bytes(paths[1], ("\n".join(md) + "\n").encode())
        grid = heatmap_grid(rows, swept, delta=bool(base_acc))
        heatmap = None
        if grid is not None:
            heatmap = save_heatmap(grid, sweep_dir, delta=bool(base_acc), baseline=baseline)
            paths += heatmap["paths"]
    return dict(rows=rows, columns=columns, swept=swept, baseline=base_acc, heatmap=heatmap, markdown=md, paths=paths)


def save_heatmap(grid, out: Path, delta: bool, baseline: Optional[str]) -> Dict[str, Any]:
    """Draw the grid with :func:`fusion_bench_larv.plots.tier_figure` (the Figure 4 heatmap)
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


# ----------------------------------------------------------------------------- the callback
# sweep folder -> its held lock; kept outside the callback, which launchers pickle
_SWEEP_LOCKS: Dict[str, contextlib.ExitStack] = {}


class LARVSweepCallback(Callback):
    """Hydra callback of this package's primary config (see the module docstring).

    Args:
        baseline: ``null``, or a finished run's ``program_report.json`` (or its folder) that
            the sweep table and heatmap compare against (Δ columns).
    """

    def __init__(self, baseline: Optional[str] = None):
        if baseline is not None and (not isinstance(baseline, str) or not baseline):
            raise TypeError(f"hydra.callbacks.larv_sweep.baseline: expected a path, got {baseline!r}")
        self.baseline = None if baseline is None else os.path.abspath(os.path.expanduser(baseline))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.baseline is not None and not accuracies(read_report(self.baseline)):
            raise ValueError(
                f"hydra.callbacks.larv_sweep.baseline={self.baseline!r}: no FusionBench report with accuracies "
                f"there (expected a {REPORT_NAME} or a folder holding one)")
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", default=None)
        if sweep_dir is not None:
            self._claim_sweep_dir(Path(str(sweep_dir)))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            self._job_end(config, job_return)
        except Exception as e:  # the summary must never turn a finished job into a failure
            log.warning("fusion-bench-larv: could not summarise the job: %s", e, exc_info=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            self._summarise(sweep_dir)
        finally:
            _SWEEP_LOCKS.pop(os.path.abspath(sweep_dir), contextlib.ExitStack()).close()

    def _claim_sweep_dir(self, sweep_dir: Path) -> None:
        """Hold ``<sweep dir>/.larv_sweep.lock`` until the sweep ends: two sweeps writing one
        folder would overwrite each other's job folders (``0``, ``1``, ...) and records, and the
        table would mix them. The second one stops before any job runs."""
        key = os.path.abspath(sweep_dir)
        _SWEEP_LOCKS.pop(key, contextlib.ExitStack()).close()
        held = contextlib.ExitStack()
        try:
            held.enter_context(try_file_lock(sweep_dir / SWEEP_LOCK))
        except LockBusy as e:
            raise RuntimeError(
                f"another sweep (pid {e.holder or '?'}) is writing {sweep_dir}: this sweep's jobs would overwrite its "
                f"job folders and records. Give this sweep its own folder (hydra.sweep.dir=...), or wait for that one "
                f"to end") from None
        _SWEEP_LOCKS[key] = held

    def _summarise(self, sweep_dir: Path) -> None:
        if not sweep_dir.is_dir():
            return
        result = write_sweep_summary(sweep_dir, self.baseline)
        log.info("Sweep summary, %s", result["markdown"][2])
        for line in result["markdown"][4:]:
            log.info(line)
        log.info("Written: %s", ", ".join(str(p) for p in result["paths"]))

    # -- helpers ---------------------------------------------------------------------------
    def _job_end(self, config: DictConfig, job_return: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        status = "completed" if job_return.status == JobStatus.COMPLETED else "failed"
        error = getattr(job_return, "_return_value", None) if status == "failed" else None
        log_dir = report_path = None
        with contextlib.suppress(Exception):  # a job that failed on its config has no log dir
            log_dir = Path(str(OmegaConf.select(config, "path.log_dir", throw_on_resolution_failure=False)))
            template = OmegaConf.select(config, "report_save_path", default=None)
            if template:
                report_path = Path(str(template).format(log_dir=log_dir))
        target = str(OmegaConf.select(config, "method._target_", default="") or "")
        is_larv = target.startswith("fusion_bench_larv.")
        if status == "completed" and is_larv and log_dir is not None:
            record = read_json(log_dir / "larv_layers.json")
            report = read_report(report_path) if report_path is not None else None
            if isinstance(record, dict) and report is not None:
                for line in run_summary_lines(report, record, log_dir, report_path):
                    log.info(line)
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        record = {
            "job_num": OmegaConf.select(config, "hydra.job.num", default=None),
            "status": status,
            "overrides": list(config.hydra.overrides.task),
            "method_target": target,
            "larv": is_larv,
            "log_dir": None if log_dir is None else str(log_dir),
            "report": None if report_path is None else str(report_path),
            "output_dir": str(config.hydra.runtime.output_dir),
            "error": None if error is None else f"{type(error).__name__}: {error}",
        }
        atomic_write_bytes(Path(record["output_dir"]) / JOB_RECORD, json.dumps(record, indent=2).encode())
        write_sweep_summary(Path(str(config.hydra.sweep.dir)), self.baseline)
