"""One results model: the job-folder reader and the CSV writer that the sweep callback and the
paper lab share.

A *job folder* holds FusionBench's ``program_report.json`` (``{<task>: {"accuracy": ...,
"loss": ...}, ..., "average": {...}}``), LARV's per-block record ``larv_layers.json`` next to it
(LARV jobs only) and, for the lab's resumable program, ``job.json`` (the job's overrides, its
config choices and its experiment). :func:`read_job` reads all of it into a :class:`Job`;
:func:`write_csv` is the one CSV writer of every table the package writes.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ..atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["REPORT_NAME", "LAYER_RECORD", "JOB_META", "SCORE_KEYS", "Job", "read_job", "read_json", "read_report",
           "task_metrics", "accuracies", "overrides_to_dict", "write_csv"]

REPORT_NAME = "program_report.json"
#: LARV's per-block record, next to the report (``report.save_layer_report``)
LAYER_RECORD = "larv_layers.json"
#: the resumable program's record of a job (``runs.programs``)
JOB_META = "job.json"
#: a task entry's score, the first of these keys it has (``score``: the GLUE pool's average)
SCORE_KEYS = ("accuracy", "spearman_rho", "score")


def read_json(path: str | os.PathLike, warn: bool = False) -> Optional[Any]:
    """The parsed JSON file, or ``None`` if it is missing or unreadable (logged if ``warn``)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        if warn:
            log.warning("cannot read %s: %s", path, e)
        return None


def read_report(path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """A FusionBench report from a ``program_report.json`` or a folder that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    report = read_json(path)
    return report if isinstance(report, dict) else None


def task_metrics(report: Dict[str, Any]) -> "OrderedDict[str, Dict[str, float]]":
    """``{task: {accuracy, loss, metric}}`` entries of a FusionBench report (incl. ``average``);
    ``accuracy`` is the entry's score, its key in ``metric`` (see :data:`SCORE_KEYS`)."""
    out: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for key, value in report.items():
        if not isinstance(value, dict):
            continue
        metric = next((k for k in SCORE_KEYS if isinstance(value.get(k), (int, float))
                       and not isinstance(value.get(k), bool)), None)
        if metric is not None:
            out[key] = {"accuracy": float(value[metric]), "loss": value.get("loss"), "metric": metric}
    return out


def accuracies(report: Optional[Dict[str, Any]]) -> Dict[str, float]:
    """``{task: accuracy, ..., "average": accuracy}`` of a report, as saved."""
    return {k: v["accuracy"] for k, v in task_metrics(report or {}).items()}


def overrides_to_dict(overrides: Iterable[str]) -> Dict[str, str]:
    """``key=value`` overrides as a dict (``+``/``~`` prefixes dropped)."""
    out: Dict[str, str] = {}
    for o in overrides:
        if "=" in o:
            k, v = o.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def _read_overrides_yaml(path: Path) -> Optional[List[str]]:
    try:
        from omegaconf import OmegaConf

        return [str(x) for x in OmegaConf.load(path)]
    except Exception:  # missing or unreadable: the caller decides
        return None


@dataclass
class Job:
    """One job folder as read by :func:`read_job`."""

    folder: Path
    #: FusionBench's report (``None``: missing or unreadable)
    report: Optional[Dict[str, Any]]
    #: LARV's per-block record (``None``: not a LARV job, or unreadable)
    record: Optional[Dict[str, Any]] = None
    #: the resumable program's ``job.json`` (``None`` outside the lab)
    meta: Optional[Dict[str, Any]] = None

    @functools.cached_property
    def overrides(self) -> Optional[List[str]]:
        """The job's command-line overrides (``None``: none found), read when first asked for
        (the sweep table never asks: its job records hold them)."""
        if self.meta is not None:
            return [str(o) for o in self.meta.get("overrides") or []]
        return (_read_overrides_yaml(self.folder / "hydra_output" / "overrides.yaml")
                or _read_overrides_yaml(self.folder / "overrides.yaml"))

    @functools.cached_property
    def override_dict(self) -> Dict[str, str]:
        return overrides_to_dict(self.overrides or [])

    @property
    def choices(self) -> Dict[str, str]:
        """``job.json``'s config choices (``{}`` without one)."""
        return {str(k): str(v) for k, v in ((self.meta or {}).get("choices") or {}).items()}

    def choice(self, group: str) -> str:
        """The config option of ``group`` (``modelpool``, ``method``, ``taskpool``): from
        ``job.json``'s choices, else from the overrides."""
        return str(self.choices.get(group) or self.override_dict.get(group, ""))


def read_job(folder: str | os.PathLike, report: Optional[str | os.PathLike] = None, warn: bool = False) -> Job:
    """Read a job folder: its report (``report`` when FusionBench's ``report_save_path`` put it
    elsewhere), LARV's record, ``job.json``, and its overrides (``job.json``'s, else Hydra's
    ``overrides.yaml`` that FusionBench links in as ``hydra_output/``, else Hydra's own in a plain
    ``fusion_bench -m`` job folder)."""
    folder = Path(folder)
    report_data = read_json(Path(report) if report is not None else folder / REPORT_NAME, warn=warn)
    record = read_json(folder / LAYER_RECORD, warn=warn) if (folder / LAYER_RECORD).exists() else None
    meta = read_json(folder / JOB_META, warn=warn) if (folder / JOB_META).exists() else None
    return Job(folder, report_data if isinstance(report_data, dict) else None,
               record if isinstance(record, dict) else None, meta if isinstance(meta, dict) else None)


def write_csv(path: str | os.PathLike, rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> Path:
    """``rows`` as CSV with the header ``columns`` (keys outside them ignored, ``None`` as an empty
    cell), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return atomic_write_text(path, buffer.getvalue())
