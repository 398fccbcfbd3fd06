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
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_write_bytes
from .locks import LockBusy, try_file_lock
from .reports import REPORT_NAME, accuracies, read_job, read_report
from .summary import JOB_RECORD, run_summary_lines, write_sweep_summary

try:  # Hydra is always there under `fusion_bench`; keep the module importable without it
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object

log = logging.getLogger("fusion_bench_larv")

RESOLVER = "larv.job_log_dir"
SWEEP_LOCK = ".larv_sweep.lock"


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
            job = read_job(log_dir, report=report_path) if report_path is not None else None
            if job is not None and job.record is not None and job.report is not None:
                for line in run_summary_lines(job.report, job.record, log_dir, report_path):
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
