"""Collect LARV/FusionBench job reports into a tidy CSV, paper-style tables and figures.

Input: a folder tree written by :mod:`fusion_bench_larv.reproduce` (any depth). A *job* is a
folder with FusionBench's ``program_report.json``; its identity (model pool, method, overrides,
corruption, ...) is read from ``job.json`` (written by
:class:`fusion_bench_larv.programs.ResumableFusionProgram`), falling back to Hydra's
``hydra_output/overrides.yaml`` that FusionBench links into every job folder (or Hydra's own
``overrides.yaml``, in a plain ``fusion_bench -m`` job folder). Reports have
FusionBench's flat layout (``{<task>: ..., "average": ...}``), and LARV's per-block record comes
from ``larv_layers.json`` next to the report. Reports written by earlier versions of this package
nest the task pool's report under ``"model"`` and the record under ``"larv"``; they are read too.

Output (``--out``):

* ``results.csv``: one row per (job, task) with the task's score and loss (fractions, as
  FusionBench reports them), plus the job's labels; the task pool's ``average`` is a row with
  ``task == "average"``. The score (column ``accuracy``) is the accuracy, except where column
  ``metric`` says otherwise: Spearman's ρ (``spearman_rho``, GLUE's STS-B) or the GLUE pool's
  average ``score``. Jobs without evaluation (``taskpool=dummy``) have no rows here.
* ``larv_blocks.csv``: one row per (LARV job, block) with e, c, z, s, tier and scale.
* ``summary.csv``: one row per evaluated CLIP merge job (bare, or LARV with any gate/tiers):
  average accuracy, Δ vs the bare merger, normalized accuracy and its Δ (percent / points).
* ``tables.md`` and ``tables.tex``: the paper's layout. Rows are mergers, each followed by its
  "+ LARV" row showing the accuracy and, in parentheses, Δ = LARV − bare in percentage points;
  columns are backbones (main table) or backbone × task count (14/20-task table). Further
  tables: normalized accuracy (accuracy / the individual fine-tuned model's accuracy on the same
  task, averaged over tasks; needs the ``individual`` experiment), gate ablation, tier grid,
  corruption robustness, generalization (seen / unseen tasks), Flan-T5 LoRA GLUE.
* Figures (PNG and PDF): ``fig_diagnostics`` (e, c, s per block, one line per merger, one row
  per backbone: the paper's Figure 2), ``fig_tiers`` (Δ accuracy heatmap over middle × deep tier
  values, colour map centred at 0: Figure 4), ``fig_corruption`` (bare vs +LARV bars per
  corruption and their average: Figure 3).

Missing runs are shown as "—" and listed in a warning; no number is ever filled in or
interpolated. Accuracies in tables are percentages with one decimal; a score the task pool
reported as NaN (STS-B's ρ on constant predictions) is shown as "NaN", never averaged in.

Usage::

    make-larv-tables outputs/larv --out outputs/larv/tables
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import textwrap
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .atomic import atomic_write_bytes, atomic_write_text
from .reproduce import BACKBONES, CORRUPTIONS, DEFAULT_GATE_VARIANT, GATE_VARIANTS, MERGERS

log = logging.getLogger("fusion_bench_larv.tables")

REPORT_NAME = "program_report.json"
MISSING = "—"

RESULT_COLUMNS = [
    "run_dir", "kind", "modelpool", "backbone", "num_tasks", "setting", "method", "merger", "larv",
    "method_overrides", "gate", "tiers", "tier_assignment", "corruption", "individual_task",
    "task", "metric", "accuracy", "loss",
]
#: a task entry's score, the first of these keys it has (``score``: the GLUE pool's average)
SCORE_KEYS = ("accuracy", "spearman_rho", "score")
BLOCK_COLUMNS = [
    "run_dir", "modelpool", "backbone", "num_tasks", "method", "merger", "method_overrides",
    "gate", "tiers", "block", "prefix", "e", "c", "z", "s", "tier", "scale",
]

#: tasks seen while merging in FusionBench's generalization pools (the rest of TA8 is unseen)
GENERALIZATION_SEEN = {
    "exp1": {"sun397", "stanford-cars", "resisc45", "dtd", "svhn", "gtsrb"},
    "exp2": {"sun397", "stanford-cars", "gtsrb", "eurosat", "dtd", "mnist"},
}
CORRUPTION_LABELS = OrderedDict(
    motion_blur="Motion", impulse_noise="Impulse", gaussian_noise="Gaussian", pixelate="Pixelate",
    spatter="Spatter", contrast="Contrast", jpeg_compression="JPEG",
)
BACKBONE_ORDER = [label for _, label in BACKBONES.values()] + ["TinyCLIP"]
_BARE_TO_MERGER = {m.bare_method: m.key for m in MERGERS.values()}
_LARV_TO_MERGER = {m.larv_method: m.key for m in MERGERS.values()}


# ---------------------------------------------------------------------------------------------
# Collecting
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished job: its labels, its report and its LARV record (if any)."""

    run_dir: str
    labels: Dict[str, Any]
    report: Dict[str, Any]
    larv: Optional[Dict[str, Any]] = None
    overrides: List[str] = field(default_factory=list)


def norm_task(name: str) -> str:
    """Task names as FusionBench's TA8 dataset configs spell them (``stanford_cars`` → ``stanford-cars``)."""
    return str(name).replace("_", "-").lower()


def describe_modelpool(modelpool: str) -> Dict[str, Any]:
    """Backbone, task count and experiment kind of a model-pool option."""
    mp = modelpool or ""
    m = re.search(r"clip-vit-(base-patch32|base-patch16|large-patch14)_(TA8|TALL14|TALL20)$", mp)
    if m:
        backbone = {v[0]: v[1] for v in BACKBONES.values()}[f"clip-vit-{m.group(1)}"]
        return dict(kind="clip", backbone=backbone, num_tasks=int(re.sub(r"\D", "", m.group(2))), setting=m.group(2))
    m = re.search(r"tinyclip_synth(\d+)", mp)
    if m:
        return dict(kind="clip", backbone="TinyCLIP", num_tasks=int(m.group(1)), setting=f"synth{m.group(1)}")
    m = re.search(r"clip-vit-(base-patch32|base-patch16|large-patch14)_(robustness_corrupted|generalization_exp\d|individual)$", mp)
    if m:
        backbone = {v[0]: v[1] for v in BACKBONES.values()}[f"clip-vit-{m.group(1)}"]
        what = m.group(2)
        if what.startswith("robustness"):
            return dict(kind="robustness", backbone=backbone, num_tasks=4, setting="corrupted")
        if what.startswith("generalization"):
            return dict(kind="generalization", backbone=backbone, num_tasks=6, setting=what.split("_")[-1])
        return dict(kind="individual", backbone=backbone, num_tasks=1, setting="individual")
    if "flan-t5" in mp:
        return dict(kind="nlp", backbone=mp.split("/")[-1].split("_")[0], num_tasks=8, setting="glue_lora16")
    return dict(kind="other", backbone=mp, num_tasks=None, setting=None)


def describe_method(method: str) -> Tuple[str, bool]:
    """(merger key, is LARV) of a method option."""
    if method in _LARV_TO_MERGER:
        return _LARV_TO_MERGER[method], True
    if method in _BARE_TO_MERGER:
        return _BARE_TO_MERGER[method], False
    if method and method.startswith("larv_"):
        return method[len("larv_"):], True
    return method or "", False


def _fmt_tiers(tiers: Any) -> str:
    if tiers is None:
        return ""
    return "/".join(f"{float(t):g}" for t in tiers)


def gate_label(gate: Optional[str], tiers: Any, tier_assignment: Optional[str]) -> str:
    """Name of a gate variant as in :data:`fusion_bench_larv.reproduce.GATE_VARIANTS`."""
    if not gate:
        return ""
    if gate == "tiered":
        n = len(tiers) if tiers is not None else 0
        if tier_assignment == "depth":
            return "depth_tiers"
        return f"tiered{n}" if n else "tiered"
    return str(gate)


def _read_json(path: Path) -> Optional[Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        log.warning("cannot read %s: %s", path, e)
        return None


def _read_overrides_yaml(path: Path) -> Optional[List[str]]:
    try:
        from omegaconf import OmegaConf

        return [str(x) for x in OmegaConf.load(path)]
    except Exception:  # missing or unreadable: the caller warns
        return None


def _overrides_to_dict(overrides: Iterable[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for o in overrides:
        if "=" in o:
            k, v = o.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def load_run(run_dir: Path, root: Path) -> Optional[Run]:
    """Read one job folder (``None`` if it has no readable report or no identity)."""
    report = _read_json(run_dir / REPORT_NAME)
    if not isinstance(report, dict):
        return None
    meta = _read_json(run_dir / "job.json") if (run_dir / "job.json").exists() else None
    overrides: Optional[List[str]] = None
    choices: Dict[str, str] = {}
    method_cfg: Dict[str, Any] = {}
    if isinstance(meta, dict):
        overrides = list(meta.get("overrides") or [])
        choices = dict(meta.get("choices") or {})
        method_cfg = dict(meta.get("method") or {})
    else:
        # FusionBench links Hydra's job folder in as hydra_output/; in a plain multirun through
        # our primary config the job folder is Hydra's, so overrides.yaml is right there
        overrides = (_read_overrides_yaml(run_dir / "hydra_output" / "overrides.yaml")
                     or _read_overrides_yaml(run_dir / "overrides.yaml"))
        if overrides is None:
            log.warning("%s: no job.json, no overrides.yaml and no hydra_output/overrides.yaml; skipped", run_dir)
            return None
    ov = _overrides_to_dict(overrides)
    modelpool = choices.get("modelpool") or ov.get("modelpool", "")
    method = choices.get("method") or ov.get("method", "")
    larv = report.get("larv")
    if larv is None and (run_dir / "larv_layers.json").exists():
        larv = _read_json(run_dir / "larv_layers.json")
    merger, is_larv = describe_method(method)
    src = larv if isinstance(larv, dict) else {}
    gate = src.get("gate", method_cfg.get("gate", ov.get("method.gate")))
    tiers = src.get("tiers", method_cfg.get("tiers"))
    if tiers is None and "method.tiers" in ov:
        tiers = [float(x) for x in ov["method.tiers"].strip("[]").split(",") if x]
    tier_assignment = src.get("tier_assignment", method_cfg.get("tier_assignment", ov.get("method.tier_assignment")))
    labels: Dict[str, Any] = dict(describe_modelpool(modelpool))
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
        tiers=_fmt_tiers(tiers) if is_larv and gate == "tiered" else "",
        tier_assignment=(tier_assignment or "") if is_larv else "",
        corruption=(meta or {}).get("corruption") or ov.get("corruption", ""),
        individual_task=((meta or {}).get("individual_task") or ov.get("individual_task")
                         or ov.get("modelpool.individual", "")),
    )
    if method == "dummy" and labels["individual_task"]:
        # a fine-tuned model evaluated alone (FusionBench's *_individual pools, or the
        # synthetic pool's `individual` key)
        labels.update(kind="individual", merger="individual")
    elif method == "dummy" and labels["kind"] == "clip":
        # FusionBench's dummy method returns the pool's pretrained model: the zero-shot row
        labels.update(kind="zeroshot", merger="zeroshot")
    return Run(str(run_dir), labels, report, larv if isinstance(larv, dict) else None, overrides)


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


def task_metrics(report: Dict[str, Any]) -> "OrderedDict[str, Dict[str, float]]":
    """``{task: {accuracy, loss, metric}}`` entries of a FusionBench report (incl. ``average``);
    ``accuracy`` is the entry's score, its key in ``metric`` (see :data:`SCORE_KEYS`).

    Reads FusionBench's flat layout (every report of this package's current version, LARV or
    bare) and the nested one of earlier LARV reports, whose method returned
    ``{"model": merged, "larv": record}`` so that FusionBench put the task pool's report under
    ``"model"``.
    """
    out: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for key, value in report.items():
        if not isinstance(value, dict):
            continue
        metric = next((k for k in SCORE_KEYS if isinstance(value.get(k), (int, float))
                       and not isinstance(value.get(k), bool)), None)
        if metric is not None:
            out[key] = {"accuracy": float(value[metric]), "loss": value.get("loss"), "metric": metric}
    if not out and isinstance(report.get("model"), dict):
        return task_metrics(report["model"])
    return out


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


SUMMARY_COLUMNS = [
    "backbone", "num_tasks", "merger", "larv", "gate", "tiers", "tier_assignment", "method_overrides",
    "accuracy", "delta_vs_bare", "normalized", "normalized_delta_vs_bare", "run_dir",
]


def summary_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per evaluated CLIP merge job (bare or LARV, any variant): average accuracy (%),
    Δ vs the bare merger with the same base hyperparameters (points), normalized accuracy (%:
    accuracy / individual fine-tuned accuracy, averaged over tasks) and its Δ. Cells whose
    inputs are missing are left empty."""
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
    for r in sorted(jobs, key=lambda r: (_setting_order((r["backbone"], r["num_tasks"])),
                                         list(MERGERS).index(r["merger"]) if r["merger"] in MERGERS else 99,
                                         bool(r["larv"]), r["method_overrides"], r["run_dir"])):
        acc, norm = measures(dict(run_dir=r["run_dir"]))
        bare_acc = bare_norm = None
        if r["merger"] in MERGERS:
            bare_acc, bare_norm = measures(dict(kind="clip", backbone=r["backbone"], num_tasks=r["num_tasks"],
                                                **_variant_crit(r["merger"], False)))
        delta = lambda x, b: "" if x is None or b is None or not r["larv"] else round(100 * (x - b), 2)
        out.append({
            **{k: r.get(k, "") for k in ("backbone", "num_tasks", "merger", "larv", "gate", "tiers",
                                         "tier_assignment", "method_overrides", "run_dir")},
            "accuracy": "" if acc is None else round(100 * acc, 2),
            "delta_vs_bare": delta(acc, bare_acc),
            "normalized": "" if norm is None else round(100 * norm, 2),
            "normalized_delta_vs_bare": delta(norm, bare_norm),
        })
    return out


def write_csv(path: Path, rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> None:
    buffer = io.StringIO(newline="")
    w = csv.DictWriter(buffer, fieldnames=list(columns))
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Selecting values (never inventing them)
# ---------------------------------------------------------------------------------------------


class Index:
    """Look-ups over the tidy rows; every miss is remembered for the warning."""

    def __init__(self, rows: Sequence[Dict[str, Any]]):
        self.rows = list(rows)
        self.missing: List[str] = []

    def find(self, what: str, **crit: Any) -> List[Dict[str, Any]]:
        out = [r for r in self.rows if all(_match(r.get(k), v) for k, v in crit.items())]
        return out

    def value(self, what: str, task: str = "average", **crit: Any) -> Optional[float]:
        """Accuracy (fraction) of the single job matching ``crit`` on ``task``; None if missing."""
        hits = self.find(what, task=task, **crit)
        if not hits:
            self.missing.append(what)
            return None
        if len({h["run_dir"] for h in hits}) > 1:
            log.warning("%s: %d jobs match, using %s", what, len(hits), hits[0]["run_dir"])
        return float(hits[0]["accuracy"])


def _match(value: Any, wanted: Any) -> bool:
    if callable(wanted):
        return bool(wanted(value))
    return value == wanted


def bare_overrides_str(merger: str) -> str:
    spec = MERGERS.get(merger)
    if spec is None:
        return ""
    return ";".join(sorted(f"{k}={v}" for k, v in spec.bare_overrides))


def _variant_crit(merger: str, larv: bool) -> Dict[str, Any]:
    """The main-table version of a merger: bare with the LARV base hyperparameters, or the
    ``larv_*`` config with no method overrides (its shipped defaults)."""
    if larv:
        return dict(merger=merger, larv=True, method_overrides="")
    return dict(merger=merger, larv=False, method_overrides=bare_overrides_str(merger))


def pct(x: Optional[float]) -> str:
    if x is None:
        return MISSING
    return "NaN" if math.isnan(x) else f"{100 * x:.1f}"


def pct_delta(x: Optional[float], base: Optional[float]) -> str:
    if x is None:
        return MISSING
    if base is None or math.isnan(x) or math.isnan(base):
        return pct(x)
    return f"{100 * x:.1f} ({100 * (x - base):+.1f})"


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


@dataclass
class Table:
    """A rendered-agnostic table: a title, a header and rows of cell strings."""

    key: str
    title: str
    header: List[str]
    rows: List[List[str]]
    note: str = ""


def _mergers_present(rows: Sequence[Dict[str, Any]], **crit: Any) -> List[str]:
    present = {r["merger"] for r in rows if all(_match(r.get(k), v) for k, v in crit.items())}
    ordered = [m for m in MERGERS if m in present]
    return ordered + sorted(present - set(ordered))


def _label(merger: str) -> str:
    return MERGERS[merger].label if merger in MERGERS else merger


def reference_rows(idx: Index, key: str, columns: Sequence[Tuple[str, Dict[str, Any]]],
                   normalized: bool = False) -> List[List[str]]:
    """The paper's first rows, where their jobs exist: the pretrained model (zero-shot) and,
    for accuracy tables, the individual fine-tuned models (each on its own task, averaged over
    the column's tasks). Only for columns that are a backbone and a task count (not the
    robustness, generalization or GLUE tables)."""
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


def individual_average(idx: Index, what: str, crit: Dict[str, Any]) -> Optional[float]:
    """Mean over the tasks of the jobs matching ``crit`` of each individual fine-tuned model's
    accuracy on its own task (None, and recorded as missing, if any task has no such job)."""
    tasks = sorted({r["task"] for r in idx.find("", **crit) if r["task"] != "average"})
    accs = []
    for t in tasks:
        same = (lambda v, t=t: norm_task(v) == norm_task(t))
        hits = idx.find("", kind="individual", backbone=crit["backbone"], individual_task=same, task=same)
        if not hits:
            idx.missing.append(f"{what} ({t})")
            return None
        accs.append(float(hits[0]["accuracy"]))
    return sum(accs) / len(accs) if accs else None


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
            b = value_fn(f"{key}: {_label(m)} bare @ {col_label}", {**crit, **_variant_crit(m, False)})
            lv = value_fn(f"{key}: {_label(m)} +LARV @ {col_label}", {**crit, **_variant_crit(m, True)})
            bare.append(pct(b))
            larv.append(pct_delta(lv, b))
        rows.append([_label(m)] + bare)
        rows.append(["+ LARV"] + larv)
    return Table(key, title, ["Method"] + [c for c, _ in columns], rows, note)


def normalized_value(idx: Index, what: str, crit: Dict[str, Any]) -> Optional[float]:
    """Mean over tasks of accuracy / individual fine-tuned accuracy (None if any part is missing)."""
    runs = idx.find(what, **crit)
    tasks = [r for r in runs if r["task"] != "average"]
    if not tasks:
        idx.missing.append(what)
        return None
    ratios = []
    for r in tasks:
        same = (lambda t, rt=r["task"]: norm_task(t) == norm_task(rt))
        ind = idx.find(what, kind="individual", backbone=r["backbone"], individual_task=same, task=same)
        if not ind:
            idx.missing.append(f"{what} (individual {r['task']})")
            return None
        ratios.append(float(r["accuracy"]) / float(ind[0]["accuracy"]))
    return sum(ratios) / len(ratios)


def build_tables(rows: Sequence[Dict[str, Any]]) -> Tuple[List[Table], List[str]]:
    """Every table for which at least one job exists; returns (tables, missing cells)."""
    idx = Index(rows)
    tables: List[Table] = []
    clip = [r for r in rows if r["kind"] == "clip"]
    # main table (8 tasks) and its normalized version
    backbones8 = [b for b in BACKBONE_ORDER if any(r["backbone"] == b and r["num_tasks"] == 8 for r in clip)]
    if backbones8:
        cols = [(b, dict(kind="clip", backbone=b, num_tasks=8)) for b in backbones8]
        mergers = _mergers_present(clip, num_tasks=8)
        tables.append(paired_table(idx, "main", "Average accuracy (%), 8 tasks; + LARV: accuracy (Δ vs bare, points)",
                                   cols, mergers))
        if any(r["kind"] == "individual" for r in rows):
            tables.append(paired_table(idx, "normalized", "Normalized accuracy (%), 8 tasks: accuracy / individual "
                                       "fine-tuned accuracy, averaged over tasks", cols, mergers, normalized=True,
                                       value_fn=lambda what, crit: normalized_value(idx, what, crit)))
    # 14/20-task table (with 8 for reference)
    settings = sorted({(r["backbone"], r["num_tasks"]) for r in clip if r["num_tasks"] in (14, 20)},
                      key=_setting_order)
    if settings:
        cols = []
        for b in dict.fromkeys(s[0] for s in settings):
            for n in (8, 14, 20):
                if any(r["backbone"] == b and r["num_tasks"] == n for r in clip):
                    cols.append((f"{b} ({n})", dict(kind="clip", backbone=b, num_tasks=n)))
        tables.append(paired_table(idx, "tall", "Average accuracy (%) by number of tasks; + LARV: accuracy (Δ, points)",
                                   cols, _mergers_present(clip)))
        if any(r["kind"] == "individual" for r in rows):
            tables.append(paired_table(idx, "normalized_tall", "Normalized accuracy (%) by number of tasks",
                                       cols, _mergers_present(clip), normalized=True,
                                       value_fn=lambda what, crit: normalized_value(idx, what, crit)))
    tables += _gate_tables(idx, clip)
    tables += _tier_tables(idx, clip)
    tables += _robustness_tables(idx, rows)
    tables += _generalization_tables(idx, rows)
    tables += _nlp_tables(idx, rows)
    return tables, list(dict.fromkeys(idx.missing))


def _setting_order(setting: Tuple[str, Any]) -> Tuple[int, str, int]:
    """Sort key of (backbone, number of tasks): the paper's backbone order, then task count."""
    backbone, num_tasks = setting
    rank = BACKBONE_ORDER.index(backbone) if backbone in BACKBONE_ORDER else len(BACKBONE_ORDER)
    return rank, str(backbone), int(num_tasks or 0)


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
    for b, n in sorted({(r["backbone"], r["num_tasks"]) for r in ablation}, key=_setting_order):
        mergers = _mergers_present(ablation, backbone=b, num_tasks=n)
        base = dict(kind="clip", backbone=b, num_tasks=n)
        for key_prefix, what_label, value in metrics:
            bare = {m: value(f"gates: {key_prefix}{_label(m)} bare @ {b} ({n})", {**base, **_variant_crit(m, False)})
                    for m in mergers}
            rows = [["bare"] + [pct(bare[m]) for m in mergers]]
            defaults_used = False
            for g in GATE_VARIANTS:
                cells = []
                for m in mergers:
                    crit = dict(**base, merger=m, larv=True, method_overrides=_gate_overrides(g))
                    if g == DEFAULT_GATE_VARIANT and not idx.find("", task="average", **crit):
                        # the same configuration run without overrides (the main table's +LARV job)
                        crit = dict(**base, **_variant_crit(m, True))
                        defaults_used = defaults_used or bool(idx.find("", task="average", **crit))
                    cells.append(pct_delta(value(f"gates: {key_prefix}{_label(m)} {g} @ {b} ({n})", crit), bare[m]))
                rows.append([g] + cells)
            note = (f"{DEFAULT_GATE_VARIANT} is the shipped defaults; where no job spelled it out, the row shows the "
                    "`larv_*` job without overrides (the same configuration)." if defaults_used else "")
            out.append(Table(f"gates_{key_prefix}{_slug(b)}_{n}",
                             f"Gate ablation, {b}, {n} tasks: {what_label} (Δ vs bare, points)",
                             ["Gate"] + [_label(m) for m in mergers], rows, note))
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
    bare = idx.value(f"tiers: {_label(merger)} bare @ {backbone}", task="average", **base, **{
        k: v for k, v in _variant_crit(merger, False).items() if k != "merger"})
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
        rows = [[_tier_fmt(mid)] + [MISSING if v is None else f"{v:+.1f}" for v in line] for mid, line in zip(mids, matrix)]
        out.append(Table(f"tiers_{_slug(b)}_{n}_{m}", f"Tier sensitivity, {_label(m)} on {b}, {n} tasks: Δ accuracy "
                         f"(points) vs bare ({pct(bare)}%); shallow tier {'/'.join(_tier_fmt(s) for s in shallow)}",
                         ["middle \\ deep"] + [_tier_fmt(d) for d in deeps], rows))
    return out


def _robustness_tables(idx: Index, rows: Sequence[Dict[str, Any]]) -> List[Table]:
    rob = [r for r in rows if r["kind"] == "robustness"]
    if not rob:
        return []
    corrs = [c for c in CORRUPTIONS if any(r["corruption"] == c for r in rob)]
    cols = [(CORRUPTION_LABELS[c], dict(kind="robustness", corruption=c)) for c in corrs]

    def avg_fn(what, crit):
        if "corruption" in crit:
            return idx.value(what, task="average", **crit)
        vals = [idx.value(f"{what} [{c}]", task="average", **crit, corruption=c) for c in corrs]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    cols.append(("Avg.", dict(kind="robustness")))
    return [paired_table(idx, "robustness", "Corruption robustness, ViT-B/32 on Cars, EuroSAT, RESISC45, GTSRB: "
                         "average accuracy (%) per corruption (Δ vs bare, points)", cols, _mergers_present(rob),
                         value_fn=avg_fn)]


def _generalization_tables(idx: Index, rows: Sequence[Dict[str, Any]]) -> List[Table]:
    gen = [r for r in rows if r["kind"] == "generalization"]
    if not gen:
        return []

    def split_fn(what, crit):
        crit = dict(crit)
        exp, part = crit.pop("_exp"), crit.pop("_part")
        hits = [r for r in idx.find(what, **crit, setting=exp) if r["task"] != "average"]
        seen = GENERALIZATION_SEEN[exp]
        vals = [float(r["accuracy"]) for r in hits if (norm_task(r["task"]) in seen) == (part == "seen")]
        if not vals:
            idx.missing.append(what)
            return None
        return sum(vals) / len(vals)

    cols = [(f"{exp} {part}", dict(kind="generalization", _exp=exp, _part=part))
            for exp in ("exp1", "exp2") if any(r["setting"] == exp for r in gen) for part in ("seen", "unseen")]
    return [paired_table(idx, "generalization", "Generalization, ViT-B/32: average accuracy (%) on the tasks seen "
                         "while merging and on unseen tasks (Δ vs bare, points)", cols, _mergers_present(gen),
                         value_fn=split_fn)]


def _nlp_tables(idx: Index, rows: Sequence[Dict[str, Any]]) -> List[Table]:
    nlp = [r for r in rows if r["kind"] == "nlp"]
    if not nlp:
        return []
    tasks = list(dict.fromkeys(r["task"] for r in nlp if r["task"] != "average"))

    def fn(what, crit):
        crit = dict(crit)
        task = crit.pop("_task")
        if task == "average" and not idx.find(what, task="average", **crit):
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
    return [paired_table(idx, "nlp", title, cols, _mergers_present(nlp), value_fn=fn)]


def _tier_fmt(x: float) -> str:
    """Tier values with at least one decimal (1.0, 1.25)."""
    return f"{x:.1f}" if round(x, 1) == x else f"{x:g}"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", s)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(table.header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(row) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
                  "—": "--", "\\": r"$\backslash$", "Δ": r"$\Delta$"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(s))


def to_latex(table: Table) -> str:
    cols = "l" + "r" * (len(table.header) - 1)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
             rf"\label{{tab:larv-{_slug(table.key)}}}", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.header) + r" \\", r"\midrule"]
    for i, row in enumerate(table.rows):
        cells = [latex_escape(c) for c in row]
        lines.append(" & ".join(cells) + r" \\")
        if row[0] == "+ LARV" and i + 1 < len(table.rows):
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DIAG_QUANTITIES = (("e", r"$e_\ell$ (effective-rank contrast)"), ("c", r"$c_\ell$ (commutator coefficient)"),
                   ("s", r"$s_\ell$ (composite score)"))


def diagnostics_figure(blocks: Sequence[Dict[str, Any]]):
    """Figure 2: one row per backbone, columns e, c, s; one line per merger (default LARV runs)."""
    plt = _plt()
    sel = [b for b in blocks if b["method_overrides"] in ("", None)]
    if not sel:
        return None
    backbones = [bb for bb in BACKBONE_ORDER if any(b["backbone"] == bb for b in sel)]
    backbones += sorted({b["backbone"] for b in sel} - set(backbones))
    fig, axes = plt.subplots(len(backbones), 3, figsize=(12, 3.2 * len(backbones)), squeeze=False)
    for i, bb in enumerate(backbones):
        rows = [b for b in sel if b["backbone"] == bb]
        runs = OrderedDict()
        for r in rows:
            runs.setdefault((r["merger"], r["num_tasks"], r["run_dir"]), []).append(r)
        # one series per merger (the first job found for it on this backbone)
        per_merger = OrderedDict()
        for (merger, n, run_dir), rs in sorted(runs.items(), key=lambda kv: (list(MERGERS).index(kv[0][0])
                                               if kv[0][0] in MERGERS else 99, kv[0][1] or 0)):
            per_merger.setdefault(merger, sorted(rs, key=lambda r: int(r["block"])))
        for j, (q, ylabel) in enumerate(DIAG_QUANTITIES):
            ax = axes[i][j]
            for merger, rs in per_merger.items():
                xs = [int(r["block"]) for r in rs if _finite(r[q])]
                ys = [float(r[q]) for r in rs if _finite(r[q])]
                ax.plot(xs, ys, marker="o", ms=3, label=_label(merger))
            ax.set_xlabel(r"block $\ell$")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{bb}: {q}")
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _finite(x: Any) -> bool:
    try:
        return x is not None and x != "" and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def tier_figure(mids, deeps, matrix, title: str, *, ylabel: str = "middle tier scale",
                xlabel: str = "deep tier scale", value_label: str = "Δ accuracy (points)", centered: bool = True):
    """Figure 4: a heatmap of ``matrix[i][j]`` over rows ``mids`` (y) and columns ``deeps`` (x).

    By default a Δ accuracy heatmap over (middle, deep) tier values, colour map centred at 0
    (red = gain). ``centered=False`` draws plain values (e.g. average accuracy) with a sequential
    colour map. Missing cells (``None``) are shown as "—". The drawn matrix is the figure's
    ``axes[0].images[0].get_array()``.
    """
    plt = _plt()
    import numpy as np
    from matplotlib.colors import Normalize, TwoSlopeNorm

    data = np.array([[np.nan if v is None else v for v in line] for line in matrix], dtype=float)
    finite = data[np.isfinite(data)]
    if centered:
        bound = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-6)
        cmap, norm, fmt = "RdBu_r", TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound), "{:+.1f}"
    else:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        cmap, norm, fmt = "viridis", Normalize(vmin=low, vmax=high if high > low else low + 1e-6), "{:.1f}"
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 + 0.9 * len(deeps)), max(3.2, 1.4 + 0.8 * len(mids))))
    im = ax.imshow(data, cmap=cmap, norm=norm, origin="lower")
    ax.set_xticks(range(len(deeps)), [_tier_fmt(d) for d in deeps])
    ax.set_yticks(range(len(mids)), [_tier_fmt(m) for m in mids])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, width=48), fontsize=8)
    for i in range(len(mids)):
        for j in range(len(deeps)):
            ax.text(j, i, MISSING if not np.isfinite(data[i, j]) else fmt.format(data[i, j]), ha="center",
                    va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=value_label)
    fig.tight_layout()
    return fig


def main_figure(rows: Sequence[Dict[str, Any]]):
    """The main tables as bars: per (backbone, task count), each merger bare vs + LARV (shipped
    defaults), with the zero-shot and individual fine-tuned averages as dashed lines."""
    plt = _plt()
    import numpy as np

    clip = [r for r in rows if r["kind"] == "clip" and r["task"] == "average"]
    settings = sorted({(r["backbone"], r["num_tasks"]) for r in clip}, key=_setting_order)
    if not settings:
        return None
    idx = Index(rows)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6), squeeze=False, sharey=True)
    for ax, (b, n) in zip(axes[0], settings):
        base = dict(kind="clip", backbone=b, num_tasks=n)
        mergers = _mergers_present(clip, backbone=b, num_tasks=n)
        x = np.arange(len(mergers))
        for k, (larv, name) in enumerate(((False, "bare"), (True, "+ LARV"))):
            vals = [idx.value("", **base, **_variant_crit(m, larv)) for m in mergers]
            ax.bar(x + (k - 0.5) * 0.38, [np.nan if v is None else 100 * v for v in vals], 0.38, label=name)
        zs = idx.find("", task="average", kind="zeroshot", backbone=b, num_tasks=n)
        if zs:
            ax.axhline(100 * float(zs[0]["accuracy"]), color="grey", ls="--", lw=1, label="zero-shot")
        ind = individual_average(idx, "", base) if any(r["kind"] == "individual" for r in rows) else None
        if ind is not None:
            ax.axhline(100 * ind, color="black", ls=":", lw=1, label="individual")
        ax.set_xticks(x, [_label(m) for m in mergers], rotation=45, ha="right")
        ax.set_title(f"{b}, {n} tasks")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("average accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def corruption_figure(rows: Sequence[Dict[str, Any]]):
    """Figure 3: per merger, bare vs +LARV average accuracy per corruption and their mean."""
    plt = _plt()
    import numpy as np

    rob = [r for r in rows if r["kind"] == "robustness" and r["task"] == "average"]
    if not rob:
        return None
    corrs = [c for c in CORRUPTIONS if any(r["corruption"] == c for r in rob)]
    mergers = _mergers_present(rob)
    fig, axes = plt.subplots(1, len(mergers), figsize=(4.5 * len(mergers), 3.4), squeeze=False)
    for ax, m in zip(axes[0], mergers):
        series = OrderedDict()
        for larv, name in ((False, "bare"), (True, "+ LARV")):
            crit = _variant_crit(m, larv)
            vals = []
            for c in corrs:
                hit = [r for r in rob if r["corruption"] == c and all(_match(r.get(k), v) for k, v in crit.items())]
                vals.append(100 * float(hit[0]["accuracy"]) if hit else np.nan)
            avg = np.nan if any(np.isnan(vals)) else float(np.mean(vals))
            series[name] = vals + [avg]
        x = np.arange(len(corrs) + 1)
        width = 0.38
        for k, (name, vals) in enumerate(series.items()):
            ax.bar(x + (k - 0.5) * width, vals, width, label=name)
        ax.set_xticks(x, [CORRUPTION_LABELS[c] for c in corrs] + ["Avg."], rotation=45, ha="right")
        ax.set_xlabel("corruption")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(_label(m))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig, out: Path, name: str, png_metadata: Optional[Dict[str, str]] = None) -> List[Path]:
    """Save ``fig`` as ``<name>.png`` and ``<name>.pdf``; ``png_metadata`` becomes PNG text chunks."""
    plt = _plt()
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=150, **({"metadata": png_metadata} if ext == "png" and png_metadata else {}))
        paths.append(atomic_write_bytes(p, buffer.getvalue()))
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def make_tables(root: str | os.PathLike, out: str | os.PathLike) -> Dict[str, Any]:
    """Collect, write the CSVs, tables and figures; return what was written and what is missing."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = collect(root)
    rows = tidy_rows(runs)
    blocks = block_rows(runs)
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    write_csv(out / "larv_blocks.csv", blocks, BLOCK_COLUMNS)
    write_csv(out / "summary.csv", summary_rows(rows), SUMMARY_COLUMNS)
    # csv round trip types: keep python values for the in-memory tables
    tables, missing = build_tables(rows)
    md = ["# LARV results", "", f"Collected {len(runs)} job reports. Missing cells: {MISSING}.", ""]
    md += [to_markdown(t) for t in tables]
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
            bb = next(x for x in {r["backbone"] for r in rows} if _slug(x) == b)
            grid = tier_grid(idx, rows, bb, int(n), m)
            if grid:
                mids, deeps, matrix, _, _ = grid
                figures[f"fig_{t.key}"] = save_figure(tier_figure(mids, deeps, matrix, t.title), out, f"fig_{t.key}")
    fig = main_figure(rows)
    if fig is not None:
        figures["fig_main"] = save_figure(fig, out, "fig_main")
    fig = corruption_figure(rows)
    if fig is not None:
        figures["fig_corruption"] = save_figure(fig, out, "fig_corruption")
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
