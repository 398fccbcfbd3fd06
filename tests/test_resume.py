"""Resume that cannot lie: a finished job is skipped only when its saved config equals this job's."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import OFFLINE_ENV, fusion_bench_executable
from fusion_bench_larv import __version__
from fusion_bench_larv.runs import programs

PROGRAM = "_target_=fusion_bench_larv.runs.programs.ResumableFusionProgram"


def run_job(tiny_synth, log_dir, *overrides):
    cmd = [*fusion_bench_executable(), *tiny_synth.overrides(), PROGRAM, "method=larv_iso_c", *overrides,
           f"path.log_dir={log_dir}", "print_config=false"]
    proc = subprocess.run(cmd, cwd=log_dir.parent, env={**os.environ, **OFFLINE_ENV}, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return json.loads((log_dir / "program_report.json").read_text()), out


def _stat(p):
    st = p.stat()
    return st.st_ino, st.st_mtime_ns


def test_rerun_with_changed_tiers_gets_the_new_result(tiny_synth, tmp_path):
    job = tmp_path / "job"
    old, _ = run_job(tiny_synth, job, "method.tiers=[0.6,1.0,1.2]")
    stamp = _stat(job / "program_report.json")
    # the same job again: skipped, the report untouched
    _, out = run_job(tiny_synth, job, "method.tiers=[0.6,1.0,1.2]")
    assert "Skipping finished job" in out
    assert _stat(job / "program_report.json") == stamp
    # other tiers in the same folder: runs again, says why, and the report is the new job's
    new, out = run_job(tiny_synth, job, "method.tiers=[0.0,0.5,2.0]")
    assert "Skipping finished job" not in out
    assert "Running the job again" in out and "method.tiers" in out
    assert json.loads((job / "larv_layers.json").read_text())["tiers"] == [0.0, 0.5, 2.0]
    assert json.loads((job / "job.json").read_text())["config"]["method"]["tiers"] == [0.0, 0.5, 2.0]
    assert json.loads((job / f"program_report.json{programs.STALE_SUFFIX}").read_text()) == old
    fresh, _ = run_job(tiny_synth, tmp_path / "fresh", "method.tiers=[0.0,0.5,2.0]")
    strip = lambda r: {k: v for k, v in r.items() if k != "model_info"}
    assert strip(new) == strip(fresh)


def test_stale_reason(tmp_path):
    report = tmp_path / "program_report.json"
    report.write_text("{}")
    current = programs.job_fingerprint({"tiers": [0.6, 1.0]}, {"models": {"a": "x"}}, None)
    assert current["fusion_bench_larv"] == __version__
    assert "no job.json" in programs.stale_reason(report, current)
    (tmp_path / "job.json").write_text(json.dumps({"overrides": [], "method": {"tiers": [0.6, 1.0]}}))
    assert "saves no config" in programs.stale_reason(report, current)
    (tmp_path / "job.json").write_text(json.dumps({"config": current}))
    assert programs.stale_reason(report, current) is None
    changed = programs.job_fingerprint({"tiers": [0.6, 1.2]}, {"models": {"a": "x", "b": "y"}}, None)
    reason = programs.stale_reason(report, changed)
    assert "method.tiers: [0.6, 1.0] → [0.6, 1.2]" in reason
    assert "modelpool.models.b: (absent) → 'y'" in reason
    other_version = dict(current, fusion_bench_larv="0.0.0")
    (tmp_path / "job.json").write_text(json.dumps({"config": other_version}))
    assert f"fusion_bench_larv: '0.0.0' → '{__version__}'" in programs.stale_reason(report, current)
