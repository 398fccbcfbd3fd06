"""Reading FusionBench's job reports: the one reader the sweep callback and the paper lab share.

A report is FusionBench's ``program_report.json``: ``{<task>: {"accuracy": ..., "loss": ...},
..., "average": {...}}``. Reports written by earlier versions of this package nest it under
``"model"``; :func:`task_metrics` reads both.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

log = logging.getLogger(__name__)

__all__ = ["REPORT_NAME", "SCORE_KEYS", "read_json", "read_report", "task_metrics", "accuracies",
           "overrides_to_dict"]

REPORT_NAME = "program_report.json"
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


def accuracies(report: Optional[Dict[str, Any]]) -> Dict[str, float]:
    """``{task: accuracy, ..., "average": accuracy}`` of a report (either layout), as saved."""
    return {k: v["accuracy"] for k, v in task_metrics(report or {}).items()}


def overrides_to_dict(overrides: Iterable[str]) -> Dict[str, str]:
    """``key=value`` overrides as a dict (``+``/``~`` prefixes dropped)."""
    out: Dict[str, str] = {}
    for o in overrides:
        if "=" in o:
            k, v = o.split("=", 1)
            out[k.lstrip("+~")] = v
    return out
