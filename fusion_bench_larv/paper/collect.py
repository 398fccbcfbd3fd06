"""Collect the paper lab's job reports into tidy rows, and look values up in them.

Input: a folder tree written by :mod:`fusion_bench_larv.paper.reproduce` (any depth). A *job* is
a folder with FusionBench's ``program_report.json``, read with the one job-folder reader
(:func:`fusion_bench_larv.runs.reports.read_job`, shared with the sweep callback): the report,
LARV's per-block record, ``job.json`` (the job's overrides, choices and experiment, written by
:class:`fusion_bench_larv.runs.programs.ResumableFusionProgram`), else Hydra's overrides. A job's
kind (merge, robustness, generalization, individual, NLP) is its experiment's, where ``job.json``
names one; a folder without it (a plain ``fusion_bench -m`` job) is described from its pool name.

:func:`tidy_rows` gives one row per (job, task), :func:`block_rows` one per (LARV job, block),
:func:`summary_rows` one per evaluated CLIP merge job; :class:`Index` finds rows by their labels
and remembers every miss: no number is ever filled in or interpolated.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..runs.reports import REPORT_NAME, read_job, task_metrics
from .experiments import MERGERS
from .labels import BACKBONE_ORDER, describe_method, describe_modelpool, gate_label, norm_task, tier_text

log = logging.getLogger("fusion_bench_larv.paper.collect")


RESULT_COLUMNS = [
    "run_dir", "kind", "modelpool", "backbone", "num_tasks", "setting", "method", "merger", "larv",
    "method_overrides", "gate", "tiers", "tier_assignment", "corruption", "individual_task", "split", "tuned",
    "score_depth_spearman", "task", "metric", "accuracy", "loss",
]


BLOCK_COLUMNS = [
    "run_dir", "modelpool", "backbone", "num_tasks", "method", "merger", "method_overrides",
    "gate", "tiers", "block", "prefix", "e", "c", "z", "s", "tier", "scale",
]


@dataclass
class Run:
    """One finished job: its labels, its report and its LARV record (if any)."""

    run_dir: str
    labels: Dict[str, Any]
    report: Dict[str, Any]
    larv: Optional[Dict[str, Any]] = None
    overrides: List[str] = field(default_factory=list)


def _score_depth_spearman(record: Dict[str, Any]) -> Any:
    """The record's rank correlation of the scores with depth (computed from its blocks for a
    record written before runs saved it); "" without scores."""
    if record.get("score_depth_spearman") is not None:
        return round(float(record["score_depth_spearman"]), 4)
    blocks = record.get("blocks") or []
    if not blocks:
        return ""
    import torch

    from ..gates import depth_rank_correlation

    scores = torch.tensor([float("nan") if b.get("s") is None else float(b["s"]) for b in blocks], dtype=torch.float64)
    value = depth_rank_correlation(scores)
    return "" if value is None else round(value, 4)


#: the kind of job each ``reproduce-larv`` experiment runs (the rest are CLIP merges)
EXPERIMENT_KINDS = {"robustness": "robustness", "generalization": "generalization", "individual": "individual",
                    "nlp": "nlp"}


def load_run(run_dir: Path, root: Path) -> Optional[Run]:
    """Read one job folder (``None`` if it has no readable report or no identity)."""
    job = read_job(run_dir, warn=True)
    if job.report is None:
        return None
    if job.overrides is None:
        log.warning("%s: no job.json, no overrides.yaml and no hydra_output/overrides.yaml; skipped", run_dir)
        return None
    meta, overrides, ov = job.meta or {}, job.overrides, job.override_dict
    method_cfg: Dict[str, Any] = dict(meta.get("method") or {})
    modelpool, method = job.choice("modelpool"), job.choice("method")
    larv = job.record
    merger, is_larv = describe_method(method)
    src = larv or {}
    gate = src.get("gate", method_cfg.get("gate", ov.get("method.gate")))
    tiers = src.get("tiers", method_cfg.get("tiers"))
    if tiers is None and "method.tiers" in ov:
        tiers = [float(x) for x in ov["method.tiers"].strip("[]").split(",") if x]
    tier_assignment = src.get("tier_assignment", method_cfg.get("tier_assignment", ov.get("method.tier_assignment")))
    labels: Dict[str, Any] = dict(describe_modelpool(modelpool))
    if meta.get("experiment") in EXPERIMENT_KINDS:
        labels["kind"] = EXPERIMENT_KINDS[meta["experiment"]]
    labels.update(
        run_dir=os.path.relpath(run_dir, root),
        modelpool=modelpool,
        method=method,
        merger=merger,
        larv=is_larv,
        # the schedule's hyperparameters as overridden on the command line; block_pattern only
        # says where the blocks are (architecture), so it is not part of a variant's name
        method_overrides=";".join(sorted(o for o in overrides if o.lstrip("+").startswith("method.")
                                         and not o.lstrip("+").startswith("method.block_pattern="))),
        gate=gate_label(gate, tiers, tier_assignment) if is_larv else "",
        tiers=tier_text(tiers) if is_larv and gate == "tiered" else "",
        tier_assignment=(tier_assignment or "") if is_larv else "",
        experiment=meta.get("experiment", ""),
        corruption=meta.get("corruption") or ov.get("corruption", ""),
        individual_task=(meta.get("individual_task") or ov.get("individual_task")
                         or ov.get("modelpool.individual", "")),
        # validation jobs of a tuned row (paper/select.py) and the tuned rows' test jobs
        split="val" if job.choice("taskpool").endswith("_val") else "test",
        tuned=meta.get("tuned") or ov.get("tuned", ""),
        score_depth_spearman=_score_depth_spearman(src) if is_larv else "",
    )
    if method == "dummy" and labels["kind"] == "robustness":
        # a robustness pool's reference job: the pretrained model, or one fine-tuned tower alone
        # (its own task is the diagonal), on one split
        labels.update(merger="individual" if labels["individual_task"] else "zeroshot")
    elif method == "dummy" and labels["individual_task"]:
        # a fine-tuned model evaluated alone (FusionBench's *_individual pools, or the
        # synthetic pool's `individual` key)
        labels.update(kind="individual", merger="individual")
    elif method == "dummy" and labels["kind"] == "clip":
        # FusionBench's dummy method returns the pool's pretrained model: the zero-shot row
        labels.update(kind="zeroshot", merger="zeroshot")
    return Run(str(run_dir), labels, job.report, larv, overrides)


def collect(root: str | os.PathLike) -> List[Run]:
    """Every job folder under ``root`` with a report (symlinks are not followed)."""
    root = Path(root)
    runs: List[Run] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if REPORT_NAME in filenames:
            run = load_run(Path(dirpath), root)
            if run is not None:
                runs.append(run)
    log.info("collected %d job reports under %s", len(runs), root)
    return runs


def tidy_rows(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    rows = []
    for run in runs:
        for task, metrics in task_metrics(run.report).items():
            row = {k: run.labels.get(k, "") for k in RESULT_COLUMNS}
            row.update(task=task, metric=metrics["metric"], accuracy=metrics["accuracy"], loss=metrics["loss"])
            rows.append(row)
    return rows


def block_rows(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    rows = []
    for run in runs:
        for b in (run.larv or {}).get("blocks", []) or []:
            row = {k: run.labels.get(k, "") for k in BLOCK_COLUMNS}
            row.update(block=b.get("index"), prefix=b.get("prefix"), e=b.get("e"), c=b.get("c"), z=b.get("z"),
                       s=b.get("s"), tier=b.get("tier"), scale=b.get("scale"))
            rows.append(row)
    return rows


class Index:
    """Look-ups over the tidy rows; every miss is remembered for the warning."""

    def __init__(self, rows: Sequence[Dict[str, Any]]):
        self.rows = list(rows)
        self.missing: List[str] = []

    def find(self, **crit: Any) -> List[Dict[str, Any]]:
        """The rows matching every criterion (a value, or a predicate on the row's value)."""
        return [r for r in self.rows if all(match(r.get(k), v) for k, v in crit.items())]

    def value(self, what: str, task: str = "average", **crit: Any) -> Optional[float]:
        """Accuracy (fraction) of the single job matching ``crit`` on ``task``; None (and ``what``
        remembered as missing) if none does."""
        hits = self.find(task=task, **crit)
        if not hits:
            self.missing.append(what)
            return None
        if len({h["run_dir"] for h in hits}) > 1:
            log.warning("%s: %d jobs match, using %s", what, len(hits), hits[0]["run_dir"])
        return float(hits[0]["accuracy"])


def match(value: Any, wanted: Any) -> bool:
    if callable(wanted):
        return bool(wanted(value))
    return value == wanted


def bare_overrides_str(merger: str) -> str:
    spec = MERGERS.get(merger)
    if spec is None:
        return ""
    return ";".join(sorted(f"{k}={v}" for k, v in spec.bare_overrides))


def variant_crit(merger: str, larv: bool) -> Dict[str, Any]:
    """The main-table version of a merger: bare with the LARV base hyperparameters, or the
    ``larv_*`` config with no method overrides (its shipped defaults)."""
    if larv:
        return dict(merger=merger, larv=True, method_overrides="")
    return dict(merger=merger, larv=False, method_overrides=bare_overrides_str(merger))


def mergers_present(rows: Sequence[Dict[str, Any]], **crit: Any) -> List[str]:
    present = {r["merger"] for r in rows if all(match(r.get(k), v) for k, v in crit.items())}
    ordered = [m for m in MERGERS if m in present]
    return ordered + sorted(present - set(ordered))


def merger_label(merger: str) -> str:
    return MERGERS[merger].label if merger in MERGERS else merger


def setting_order(setting: Tuple[str, Any]) -> Tuple[int, str, int]:
    """Sort key of (backbone, number of tasks): the paper's backbone order, then task count."""
    backbone, num_tasks = setting
    rank = BACKBONE_ORDER.index(backbone) if backbone in BACKBONE_ORDER else len(BACKBONE_ORDER)
    return rank, str(backbone), int(num_tasks or 0)


def individual_average(idx: Index, what: str, crit: Dict[str, Any]) -> Optional[float]:
    """Mean over the tasks of the jobs matching ``crit`` of each individual fine-tuned model's
    accuracy on its own task (None, and recorded as missing, if any task has no such job)."""
    tasks = sorted({r["task"] for r in idx.find(**crit) if r["task"] != "average"})
    accs = []
    for t in tasks:
        same = (lambda v, t=t: norm_task(v) == norm_task(t))
        hits = idx.find(kind="individual", backbone=crit["backbone"], individual_task=same, task=same)
        if not hits:
            idx.missing.append(f"{what} ({t})")
            return None
        accs.append(float(hits[0]["accuracy"]))
    return sum(accs) / len(accs) if accs else None


def normalized_value(idx: Index, what: str, crit: Dict[str, Any]) -> Optional[float]:
    """Mean over tasks of accuracy / individual fine-tuned accuracy (None if any part is missing)."""
    runs = idx.find(**crit)
    tasks = [r for r in runs if r["task"] != "average"]
    if not tasks:
        idx.missing.append(what)
        return None
    ratios = []
    for r in tasks:
        same = (lambda t, rt=r["task"]: norm_task(t) == norm_task(rt))
        ind = idx.find(kind="individual", backbone=r["backbone"], individual_task=same, task=same)
        if not ind:
            idx.missing.append(f"{what} (individual {r['task']})")
            return None
        ratios.append(float(r["accuracy"]) / float(ind[0]["accuracy"]))
    return sum(ratios) / len(ratios)


SUMMARY_COLUMNS = [
    "backbone", "num_tasks", "merger", "larv", "gate", "tiers", "tier_assignment", "method_overrides",
    "score_depth_spearman", "accuracy", "delta_vs_bare", "normalized", "normalized_delta_vs_bare", "run_dir",
]


def summary_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per evaluated CLIP merge job on test with given settings (bare or LARV, any
    variant; validation jobs and rows tuned on them are in :func:`depth_rows`): average accuracy (%),
    Δ vs the bare merger with the same base hyperparameters (points), normalized accuracy (%:
    accuracy / individual fine-tuned accuracy, averaged over tasks) and its Δ. Cells whose
    inputs are missing are left empty."""
    rows = [r for r in rows if r.get("split", "test") == "test" and not r.get("tuned")]
    idx = Index(rows)
    has_individual = any(r["kind"] == "individual" for r in rows)
    jobs = [r for r in rows if r["kind"] == "clip" and r["task"] == "average"]
    cache: Dict[Tuple, Tuple[Optional[float], Optional[float]]] = {}

    def measures(crit: Dict[str, Any]) -> Tuple[Optional[float], Optional[float]]:
        key = tuple(sorted(crit.items()))
        if key not in cache:
            acc = idx.value("summary", **crit)
            norm = normalized_value(idx, "summary", crit) if has_individual and acc is not None else None
            cache[key] = (acc, norm)
        return cache[key]

    out = []
    for r in sorted(jobs, key=lambda r: (setting_order((r["backbone"], r["num_tasks"])),
                                         list(MERGERS).index(r["merger"]) if r["merger"] in MERGERS else 99,
                                         bool(r["larv"]), r["method_overrides"], r["run_dir"])):
        acc, norm = measures(dict(run_dir=r["run_dir"]))
        bare_acc = bare_norm = None
        if r["merger"] in MERGERS:
            bare_acc, bare_norm = measures(dict(kind="clip", backbone=r["backbone"], num_tasks=r["num_tasks"],
                                                **variant_crit(r["merger"], False)))
        delta = lambda x, b: "" if x is None or b is None or not r["larv"] else round(100 * (x - b), 2)
        out.append({
            **{k: r.get(k, "") for k in ("backbone", "num_tasks", "merger", "larv", "gate", "tiers",
                                         "tier_assignment", "method_overrides", "score_depth_spearman", "run_dir")},
            "accuracy": "" if acc is None else round(100 * acc, 2),
            "delta_vs_bare": delta(acc, bare_acc),
            "normalized": "" if norm is None else round(100 * norm, 2),
            "normalized_delta_vs_bare": delta(norm, bare_norm),
        })
    return out
