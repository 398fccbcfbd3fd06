"""A resumable FusionBench program: one report per job, skip finished jobs, atomic writes.

Why a program class (and not launcher-side bookkeeping)
-------------------------------------------------------
FusionBench's ``FabricModelFusionProgram`` always merges, evaluates and writes
``report_save_path`` (default ``{log_dir}/program_report.json``). In a Hydra multirun every job
gets the same ``path.log_dir`` (Hydra caches ``${now:...}``), so the jobs overwrite each other's
report, and a sweep that dies half-way (crash, SLURM preemption, Ctrl-C) has to be rerun from
scratch. The fix has to live *inside the job* to work with every launcher: Hydra's basic
launcher, ``hydra-joblib-launcher`` (loky worker processes) and ``hydra-submitit-launcher``
(SLURM jobs on other hosts) all just call the task function with the job's config.

:class:`ResumableFusionProgram` is selected with
``_target_=fusion_bench_larv.runs.programs.ResumableFusionProgram`` and adds three things:

1. **Skip finished jobs, never a changed one.** Before anything is loaded it resolves the job's
   report path (the ``{log_dir}`` placeholder is filled from ``path.log_dir``, which is what
   FusionBench's default TensorBoard logger uses as its log dir). The job is skipped only when a
   readable JSON report is there *and* the ``config`` saved in ``job.json`` next to it equals
   this job's: the resolved ``method``, ``modelpool`` and ``taskpool`` configs and this
   package's version (:func:`job_fingerprint`). Otherwise the job runs again and logs why (the
   keys that differ, or that nothing was saved); the old report is first renamed to
   ``program_report.json.stale``, so that a rerun killed half-way never leaves an old report
   next to a new ``job.json``. The report is the completion marker: it is the last file a job
   writes.
   Two jobs with one report folder (a fixed ``path.log_dir``) never run at once: each holds
   ``.job.lock`` there (an ``fcntl`` lock, gone with its process), and the second waits, then
   skips or reruns as if it had started after the first.
2. **Atomic reports.** The report is written to a temporary file in the same directory and
   moved into place with :func:`os.replace`, so a job killed while writing never leaves a
   truncated report that a rerun would mistake for a finished job.
3. **Job metadata.** ``job.json`` (written before the report, also atomically) records the
   job's Hydra overrides, its config-group choices (``method``, ``modelpool``, ``taskpool``),
   the resolved method config, so that :mod:`fusion_bench_larv.paper.tables` can label every report
   without parsing directory names, and the ``config`` fingerprint the skip rule compares.

Per-job directories come from the command line, not from this class:
:mod:`fusion_bench_larv.paper.reproduce` sets ``path.log_dir=<root>/${hydra:job.override_dirname}``
(with the plumbing keys excluded), a deterministic function of the job's overrides, so a rerun
of the same sweep finds the same directories, and an identical job requested by two
experiments (e.g. the bare Iso-C baseline of the main table and of the tier heatmap) runs once.

Optional GPU claiming (``gpus=[0,1,...]``): for local parallel sweeps with the joblib launcher
(one worker per GPU), each job takes an exclusive ``fcntl`` lock on one GPU id under
``gpu_lock_dir`` and sets ``CUDA_VISIBLE_DEVICES`` to it before CUDA is initialised (if this
worker process already initialised CUDA, it calls ``torch.cuda.set_device`` instead). The lock is
released when the job ends or its process dies. Leave ``gpus`` null on SLURM: the scheduler
already sets ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from fusion_bench.programs import FabricModelFusionProgram

from ..atomic import atomic_write_json
from .locks import file_lock

log = logging.getLogger(__name__)

#: Name of the per-job metadata file written next to the report.
JOB_METADATA_FILE = "job.json"
#: Lock file a job holds in its folder while it runs.
JOB_LOCK_FILE = ".job.lock"
#: Suffix of a report set aside because its job runs again with another config.
STALE_SUFFIX = ".stale"


def _plain(cfg: Any) -> Any:
    """A resolved, JSON-normalised copy of a config (``None`` stays ``None``)."""
    if cfg is None:
        return None
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return json.loads(json.dumps(cfg, default=str))


def job_fingerprint(method: Any, modelpool: Any, taskpool: Any) -> Dict[str, Any]:
    """What a finished job must share with a rerun to be skipped: the resolved method, model
    pool and task pool configs, and this package's version (JSON-ready)."""
    from .. import __version__

    return {"method": _plain(method), "modelpool": _plain(modelpool), "taskpool": _plain(taskpool),
            "fusion_bench_larv": __version__}


def config_differences(saved: Any, current: Any, prefix: str = "") -> List[str]:
    """``key: saved → current`` for every leaf where two JSON-like configs differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: List[str] = []
        for key in list(saved) + [k for k in current if k not in saved]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in current:
                out.append(f"{name}: {saved[key]!r} → (absent)")
            elif key not in saved:
                out.append(f"{name}: (absent) → {current[key]!r}")
            else:
                out.extend(config_differences(saved[key], current[key], name))
        return out
    return [] if saved == current else [f"{prefix or 'config'}: {saved!r} → {current!r}"]


def stale_reason(report_path: str | os.PathLike, fingerprint: Dict[str, Any]) -> Optional[str]:
    """Why the finished report at ``report_path`` is not this job's result (``None``: it is).

    The job's ``job.json`` next to the report must hold a ``config`` equal to ``fingerprint``.
    """
    meta_path = Path(report_path).parent / JOB_METADATA_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return f"no {JOB_METADATA_FILE} next to the report, so its config cannot be checked"
    except (OSError, ValueError) as e:
        return f"{meta_path} cannot be read ({e})"
    saved = meta.get("config") if isinstance(meta, dict) else None
    if saved is None:
        return f"{meta_path} saves no config (written by an earlier version), so it cannot be checked"
    diffs = config_differences(saved, fingerprint)
    if not diffs:
        return None
    shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
    return f"its saved config differs: {shown}"


def read_finished_report(path: str | os.PathLike) -> Optional[Any]:
    """Return the parsed report at ``path`` if it exists and is valid JSON, else ``None``."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("Report %s exists but cannot be read (%s): the job will run again.", path, e)
        return None


def resolve_report_path(report_save_path: Optional[str], log_dir: Optional[str]) -> Optional[str]:
    """Fill FusionBench's ``{log_dir}`` placeholder in ``report_save_path``.

    Returns ``None`` when there is no report path, or when it needs a ``log_dir`` that is unknown.
    """
    if report_save_path is None:
        return None
    if "{log_dir}" in report_save_path:
        if log_dir is None:
            return None
        return report_save_path.format(log_dir=log_dir)
    return report_save_path


def _hydra_job_metadata() -> Dict[str, Any]:
    """The current Hydra job's overrides and config-group choices ({} outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
        return {
            "overrides": list(hc.overrides.task),
            "choices": {
                k: v
                for k, v in OmegaConf.to_container(hc.runtime.choices).items()
                if not k.startswith("hydra/") and v is not None
            },
            "override_dirname": hc.job.override_dirname,
            "job_num": hc.job.get("num", None),
            "output_dir": hc.runtime.output_dir,
        }
    except Exception as e:  # metadata is best effort, never a reason to fail a job
        log.warning("Could not read Hydra job metadata: %s", e)
        return {}


class GpuClaim:
    """Exclusive claim of one GPU id among ``gpus`` through ``fcntl`` lock files.

    Args:
        gpus: Candidate GPU ids (as in ``nvidia-smi``).
        lock_dir: Folder shared by all jobs of the sweep on this host.
        poll_s: Seconds between attempts while every GPU is taken.
    """

    def __init__(self, gpus: Sequence[int], lock_dir: str | os.PathLike, poll_s: float = 2.0):
        if len(gpus) == 0:
            raise ValueError("gpus: expected at least one GPU id, got an empty list")
        self.gpus = [int(g) for g in gpus]
        self.lock_dir = Path(lock_dir)
        self.poll_s = poll_s
        self.gpu: Optional[int] = None
        self._fh = None

    def acquire(self, timeout_s: Optional[float] = None) -> int:
        """Block until one GPU id is free, lock it and return it."""
        import fcntl

        self.lock_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        while True:
            for gpu in self.gpus:
                fh = open(self.lock_dir / f"gpu{gpu}.lock", "w")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    fh.close()
                    continue
                fh.write(str(os.getpid()))
                fh.flush()
                self._fh, self.gpu = fh, gpu
                return gpu
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"no free GPU among {self.gpus} after {timeout_s} s")
            time.sleep(self.poll_s)

    def release(self) -> None:
        """Release the claimed GPU (no-op if none)."""
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh, self.gpu = None, None


class ResumableFusionProgram(FabricModelFusionProgram):
    """``FabricModelFusionProgram`` that skips finished jobs and writes reports atomically.

    Args:
        skip_existing: Skip the job when its report already exists (default ``True``; pass
            ``skip_existing=false`` to force a rerun).
        gpus: Optional GPU ids to claim one of (see the module docstring); ``null`` = leave
            device selection to the environment.
        gpu_lock_dir: Folder for the GPU lock files (default: ``<path.output_dir>/.gpu_locks``,
            or the system temp dir when ``path`` has no ``output_dir``).
        corruption: Root-level key of FusionBench's ``robustness_corrupted`` pools (which
            interpolate ``${corruption}``); recorded in ``job.json``.
        individual_task: Root-level key of the ``individual`` experiment (which fine-tuned
            model is evaluated); recorded in ``job.json``.
        tuned: Root-level key of a row whose value was chosen on validation data (its name,
            see ``paper/select.py``); recorded in ``job.json``.
        experiment: Root-level key naming the ``reproduce-larv`` experiment that runs the job;
            recorded in ``job.json`` (a job two experiments share keeps the first one's name).
        *args, **kwargs: Everything ``FabricModelFusionProgram`` takes.
    """

    def __init__(
        self,
        *args: Any,
        skip_existing: bool = True,
        gpus: Optional[List[int]] = None,
        gpu_lock_dir: Optional[str] = None,
        corruption: Optional[str] = None,
        individual_task: Optional[str] = None,
        tuned: Optional[str] = None,
        experiment: Optional[str] = None,
        **kwargs: Any,
    ):
        if not isinstance(skip_existing, bool):
            raise TypeError(f"skip_existing: expected a bool, got {skip_existing!r}")
        self.skip_existing = skip_existing
        self.gpus = None if gpus is None else [int(g) for g in gpus]
        self.gpu_lock_dir = gpu_lock_dir
        # Root-level keys some FusionBench pools interpolate (`${corruption}`); kept for job.json.
        self.extra_metadata = {
            k: v
            for k, v in (("corruption", corruption), ("individual_task", individual_task), ("tuned", tuned),
                         ("experiment", experiment))
            if v is not None
        }
        super().__init__(*args, **kwargs)

    # -- paths -----------------------------------------------------------------------------
    def _configured_log_dir(self) -> Optional[str]:
        """``path.log_dir`` from the config, read without creating the Fabric logger."""
        if self.path is not None and self.path.get("log_dir", None) is not None:
            return str(self.path.log_dir)
        return None

    def resolved_report_path(self) -> Optional[str]:
        """Where this job's report goes (``None`` if it cannot be known before running)."""
        return resolve_report_path(self.report_save_path, self._configured_log_dir())

    # -- run -------------------------------------------------------------------------------
    def run(self):
        report_path = self.resolved_report_path()
        if report_path is None:
            log.warning(
                "ResumableFusionProgram: no report path (report_save_path=%r, path.log_dir=%r); "
                "this job cannot be skipped on a rerun.",
                self.report_save_path,
                self._configured_log_dir(),
            )
            return self._run_claimed(None)
        # one job per folder at a time: a second one waits, then skips or reruns as if it came later
        folder = Path(report_path).parent
        with file_lock(folder / JOB_LOCK_FILE, waiting=f"another job is running in {folder}"):
            return self._run_claimed(report_path)

    def _run_claimed(self, report_path: Optional[str]):
        if report_path is not None and self.skip_existing:
            finished = read_finished_report(report_path)
            if finished is not None:
                reason = stale_reason(report_path, self._fingerprint())
                if reason is None:
                    log.info("Skipping finished job: report exists at %s, with the same config", report_path)
                    return {"merged_model": None, "report": finished, "skipped": True}
                stale = f"{report_path}{STALE_SUFFIX}"
                os.replace(report_path, stale)
                log.warning("Running the job again: a report exists at %s, but %s. The old report is now %s.",
                            report_path, reason, stale)

        claim = self._claim_gpu()
        try:
            return self._run_and_write(report_path)
        finally:
            if claim is not None:
                claim.release()

    def _claim_gpu(self) -> Optional[GpuClaim]:
        if not self.gpus:
            return None
        lock_dir = self.gpu_lock_dir
        if lock_dir is None:
            out = self.path.get("output_dir", None) if self.path is not None else None
            lock_dir = os.path.join(out if out else tempfile.gettempdir(), ".gpu_locks")
        claim = GpuClaim(self.gpus, lock_dir)
        gpu = claim.acquire()
        import torch

        if torch.cuda.is_initialized():
            # a reused worker process: CUDA_VISIBLE_DEVICES would be ignored now
            torch.cuda.set_device(gpu)
            log.info("Claimed GPU %d (torch.cuda.set_device; CUDA already initialised)", gpu)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
            log.info("Claimed GPU %d (CUDA_VISIBLE_DEVICES=%d)", gpu, gpu)
        return claim

    def _run_and_write(self, report_path: Optional[str]):
        if report_path is None:
            return super().run()
        final = Path(report_path)
        final.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(final.parent / JOB_METADATA_FILE, self._job_metadata(), indent=2)
        # FusionBench writes the report with a plain open(..., "w"): point it at a temporary
        # name in the same folder, then rename (atomic on POSIX).
        tmp = final.parent / f".{final.name}.{os.getpid()}.partial"
        self.report_save_path = str(tmp)
        try:
            result = super().run()
            if tmp.exists():
                os.replace(tmp, final)
                log.info("Report written to %s", final)
            else:
                log.warning("The job produced no report (no task pool or no merged model).")
        finally:
            self.report_save_path = str(final)
            with contextlib.suppress(OSError):
                tmp.unlink()
        return result

    def _fingerprint(self) -> Dict[str, Any]:
        return job_fingerprint(self._method, self._modelpool, self._taskpool)

    def _job_metadata(self) -> Dict[str, Any]:
        meta: Dict[str, Any] = _hydra_job_metadata()
        try:
            meta["method"] = OmegaConf.to_container(self._method, resolve=True)
        except Exception:  # pragma: no cover - unresolvable keys are not worth a failure
            meta["method"] = None
        meta.update(self.extra_metadata)
        meta["config"] = self._fingerprint()  # what a rerun must equal to skip this job
        return meta
