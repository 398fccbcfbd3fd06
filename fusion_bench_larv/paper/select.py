"""Values chosen on a validation split, then evaluated on test: the lab's only tuning.

A :class:`Tuned` row (e.g. task arithmetic's global scale, LiNeS's β, LARV's tier levels) names
one key and its grid. ``reproduce-larv`` runs it in two phases:

1. every grid value on the validation task pool (``<test task pool>_val``): one job each;
2. the value with the best validation average (ties: the first in grid order) on the test task
   pool, as one job marked with the root key ``tuned=<row>`` (recorded in ``job.json``), so
   that the tables list it as tuned and never mix it with the shipped settings' rows.

No test number takes part in the choice: :func:`choose` reads validation reports only.
:func:`selection_records` writes down, per tuned row, every grid value's validation accuracy,
the winner, and (once phase 2 ran) the test job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .jobs import Job, job

log = logging.getLogger("fusion_bench_larv.paper.select")

__all__ = ["Tuned", "choose", "val_accuracies", "winner_jobs", "selection_records"]


@dataclass(frozen=True)
class Tuned:
    """One row whose value is chosen on validation data.

    Args:
        row: the row's name in the tables (``bare_tuned``, ``lines``, ``larv_tuned_tiers``).
        prefix: the job's identity overrides except ``key`` (model pool, method, fixed keys).
        key: the override the grid varies (``method.scaling_factor``, ``method.lines_beta``, ...).
        values: the grid, in order (the first wins a tie).
        val_taskpool: the task pool on the validation split.
    """

    row: str
    prefix: Tuple[Tuple[str, str], ...]
    key: str
    values: Tuple[str, ...]
    val_taskpool: str

    def val_job(self, value: str) -> Job:
        return job(*self.prefix, ("taskpool", self.val_taskpool), (self.key, value))

    def val_jobs(self) -> List[Job]:
        return [self.val_job(v) for v in self.values]

    def test_job(self, value: str) -> Job:
        return job(*self.prefix, (self.key, value), ("+tuned", self.row))


def choose(values: Sequence[str], accuracies: Sequence[Optional[float]]) -> Optional[str]:
    """The value with the highest validation accuracy; the first in grid order on a tie.
    ``None`` if any grid value has no accuracy (a job failed or has not run)."""
    if not values or any(a is None for a in accuracies):
        return None
    best = max(accuracies)
    return values[list(accuracies).index(best)]


def _overrides_key(overrides: Sequence[str]) -> frozenset:
    return frozenset(o.lstrip("+") for o in overrides)


def val_accuracies(tuned: Tuned, runs) -> List[Optional[float]]:
    """The validation average accuracy of each grid value, from the collected ``runs``
    (:func:`fusion_bench_larv.paper.collect.collect`); ``None`` where no finished job matches."""
    from ..runs.reports import task_metrics

    by_overrides: Dict[frozenset, object] = {}
    for run in runs:
        by_overrides.setdefault(_overrides_key(run.overrides), run)
    out: List[Optional[float]] = []
    for value in tuned.values:
        wanted = _overrides_key(f"{k}={v}" for k, v in tuned.val_job(value).overrides)
        hits = [r for key, r in by_overrides.items() if wanted <= key]
        if not hits:
            out.append(None)
            continue
        average = task_metrics(hits[0].report).get("average")
        out.append(None if average is None else float(average["accuracy"]))
    return out


def winner_jobs(tuned_rows: Sequence[Tuned], runs) -> Tuple[List[Job], List[str]]:
    """Phase 2: the test job of every tuned row whose grid has run on validation. Returns
    ``(jobs, missing)``, ``missing`` naming the rows whose validation jobs are incomplete."""
    jobs, missing = [], []
    for tuned in tuned_rows:
        value = choose(tuned.values, val_accuracies(tuned, runs))
        if value is None:
            missing.append(f"{tuned.row} ({dict(tuned.prefix).get('modelpool')}, {dict(tuned.prefix).get('method')})")
            continue
        jobs.append(tuned.test_job(value))
    return jobs, missing


def selection_records(tuned_rows: Sequence[Tuned], runs) -> List[Dict[str, object]]:
    """One JSON-ready record per tuned row: its grid with validation accuracies and the winner."""
    records = []
    for tuned in tuned_rows:
        accs = val_accuracies(tuned, runs)
        prefix = dict(tuned.prefix)
        records.append({
            "row": tuned.row,
            "modelpool": prefix.get("modelpool"),
            "method": prefix.get("method"),
            "fixed": [f"{k}={v}" for k, v in tuned.prefix if k not in ("modelpool", "method")],
            "key": tuned.key,
            "grid": [{"value": v, "val_accuracy": a} for v, a in zip(tuned.values, accs)],
            "selected": choose(tuned.values, accs),
            "val_taskpool": tuned.val_taskpool,
        })
    return records
