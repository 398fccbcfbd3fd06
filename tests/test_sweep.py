"""Plain `fusion_bench -m` sweeps: one folder per job, the sweep table and heatmap, the run summary.

The end-to-end tests run the real CLI offline on the down-sized synthetic benchmark
(tests/conftest.py's `tiny_synth`), exactly as a user types a sweep: no `path.log_dir`.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import OFFLINE_ENV, fusion_bench_executable
from fusion_bench_larv.runs import heatmap, summary, sweep

TIERS_2X2 = ["[0.6,0.8,1.2]", "[0.6,0.8,1.4]", "[0.6,1.0,1.2]", "[0.6,1.0,1.4]"]


def run(cmd, cwd, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def png_heatmap(path):
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["larv_heatmap"])


def average(report):
    return report["average"]["accuracy"]


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


def test_plain_multirun_keeps_every_job_and_ends_with_a_sweep_table(tiny_synth, tmp_path, work):
    # the baseline, the way the README says: a bare run of its own, named on the sweep's command line
    bare_dir = tmp_path / "bare"
    bare = tiny_synth.run_cli("method=isotropic_merging/iso_c", "method.scaling_factor=1.5", log_dir=bare_dir)
    cmd = [*fusion_bench_executable(), "-m", *tiny_synth.overrides(), "method=larv_iso_c",
           f"method.tiers={','.join(TIERS_2X2)}", f"hydra.callbacks.larv_sweep.baseline={bare_dir}"]
    rc, out = run(cmd, cwd=work)
    assert rc == 0, out[-6000:]

    (sweep_dir,) = (work / "outputs" / "multirun" / "fabric_model_fusion").iterdir()
    reports = {}
    for job in range(4):
        job_dir = sweep_dir / str(job)
        report = json.loads((job_dir / "program_report.json").read_text())
        # FusionBench's flat layout; LARV's record is in larv_layers.json next to it
        assert set(report) == set(tiny_synth.tasks) | {"average", "model_info"}
        layers = json.loads((job_dir / "larv_layers.json").read_text())
        assert layers["tiers"] == json.loads(TIERS_2X2[job]) == OmegaConf.load(job_dir / "config.yaml").method.tiers
        reports[job] = report
    assert not (work / "outputs" / "fabric_model_fusion").exists()  # no shared single-run folder

    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert [int(r["job"]) for r in rows] == [0, 1, 2, 3]
    for r in rows:
        report = reports[int(r["job"])]
        assert r["status"] == "completed"
        assert r["method.tiers"] == TIERS_2X2[int(r["job"])]
        for task in tiny_synth.tasks + ["average"]:
            assert float(r[task]) == report[task]["accuracy"]
        assert float(r["delta_average"]) == pytest.approx(average(report) - average(bare), abs=1e-12)
        assert r["larv.gate"] == "tiered" and json.loads(r["larv.tiers"]) == json.loads(
            TIERS_2X2[int(r["job"])])
    md = (sweep_dir / "sweep_summary.md").read_text()
    assert "| job | status | method.tiers |" in md and "Δ average" in md

    # the heatmap: Δ average (points) over tiers[1] (rows) × tiers[2] (columns), read from the PNG
    for ext in ("png", "pdf"):
        assert (sweep_dir / f"sweep_heatmap.{ext}").stat().st_size > 0
    data = png_heatmap(sweep_dir / "sweep_heatmap.png")
    assert (data["rows"], data["columns"]) == ("method.tiers[1]", "method.tiers[2]")
    assert data["row_values"] == [0.8, 1.0] and data["column_values"] == [1.2, 1.4]
    for job, report in reports.items():
        _, mid, deep = json.loads(TIERS_2X2[job])
        cell = data["values"][data["row_values"].index(mid)][data["column_values"].index(deep)]
        assert cell == pytest.approx(100 * (average(report) - average(bare)), abs=1e-9)

    # the terminal: a summary per job, the sweep table at the end, no FusionBench print failure
    assert "Failed to pretty print" not in out
    assert out.count("LARV run summary") == 4
    assert "λ per block" in out and "| job | status | method.tiers |" in out
    assert "sweep_summary.csv" in out


def test_a_failed_job_is_a_row_not_a_gap(tiny_synth, work):
    cmd = [*fusion_bench_executable(), "-m", *tiny_synth.overrides(), "method=larv_iso_c",
           "method.tiers=[0.6,1.0,1.2],[1.0]", "print_config=false"]
    rc, out = run(cmd, cwd=work)
    assert rc != 0  # Hydra reports the failed job
    (sweep_dir,) = (work / "outputs" / "multirun" / "fabric_model_fusion").iterdir()
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert [(r["job"], r["status"], r["method.tiers"]) for r in rows] == [
        ("0", "completed", "[0.6,1.0,1.2]"), ("1", "failed", "[1.0]")]
    assert "tiers needs at least 2 levels" in rows[1]["error"]
    assert rows[1]["average"] == "" and 0.0 <= float(rows[0]["average"]) <= 1.0
    assert "| 1 | failed | [1.0] |" in (sweep_dir / "sweep_summary.md").read_text()


def test_single_run_keeps_fusion_bench_s_default_log_dir(tmp_path):
    proc = subprocess.run([*fusion_bench_executable(), "--cfg", "job", "--resolve", "method=dummy", "taskpool=dummy"],
                          cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_dir = yaml.safe_load(proc.stdout)["path"]["log_dir"]
    assert log_dir.startswith("./outputs/fabric_model_fusion/20"), log_dir


# ----------------------------------------------------------------------------- no CLI
def _records(tmp_path, jobs):
    """Job records and reports as the callback leaves them, for ``(overrides, average)`` pairs."""
    for num, (overrides, avg) in enumerate(jobs):
        job_dir = tmp_path / str(num)
        job_dir.mkdir()
        report = None if avg is None else {"a": {"accuracy": avg, "loss": 1.0}, "average": {"accuracy": avg, "loss": 1.0}}
        if report is not None:
            (job_dir / "program_report.json").write_text(json.dumps(report))
        (job_dir / summary.JOB_RECORD).write_text(json.dumps(dict(
            job_num=num, status="failed" if avg is None else "completed", overrides=overrides, larv=False,
            log_dir=str(job_dir), report=str(job_dir / "program_report.json"), output_dir=str(job_dir),
            error=None if avg is not None else "ValueError: boom")))


def test_heatmap_over_two_numeric_method_keys_without_baseline(tmp_path):
    jobs = [([f"method.eta={e}", f"method.rho={r}", "modelpool=x"], 0.1 * k + 0.01 * j)
            for k, e in enumerate((0.5, 1.0)) for j, r in enumerate((0.0, 0.5, 1.0))]
    jobs[4] = (jobs[4][0], None)  # eta=1.0, rho=0.5 failed
    _records(tmp_path, jobs)
    result = summary.write_sweep_summary(tmp_path)
    assert result["swept"] == ["method.eta", "method.rho"]
    data = png_heatmap(tmp_path / "sweep_heatmap.png")
    assert (data["rows"], data["columns"], data["quantity"]) == ("method.eta", "method.rho", "average accuracy (%)")
    expected = [[100 * (0.1 * k + 0.01 * j) for j in range(3)] for k in range(2)]
    expected[1][1] = None
    assert data["values"][1][1] is None
    assert [v for line in data["values"] for v in line if v is not None] == pytest.approx(
        [v for line in expected for v in line if v is not None])
    # the figure itself: the drawn image is that matrix, and the failed cell is marked missing
    fig = heatmap.tier_figure(data["row_values"], data["column_values"], data["values"], "t", centered=False)
    drawn = np.ma.asarray(fig.axes[0].images[0].get_array())
    assert drawn[0, 2] == pytest.approx(expected[0][2]) and np.ma.getmaskarray(drawn)[1, 1]
    assert heatmap.MISSING in [t.get_text() for t in fig.axes[0].texts]


@pytest.mark.parametrize("overrides, drawn", [
    ([["method.tiers=[0.6,1.0,1.2]"], ["method.tiers=[0.6,1.1,1.2]"], ["method.tiers=[0.7,1.1,1.3]"]], False),  # 3 positions
    ([["method.gate=tiered", "method.eta=1"], ["method.gate=continuous", "method.eta=2"]], False),  # not numeric
    ([["method.eta=1", "modelpool=a"], ["method.eta=2", "modelpool=b"]], False),  # a pool is not a method key
    ([["method.tiers=[0.6,1.0,1.2]"], ["method.tiers=[0.6,1.1,1.3]"]], True),
])
def test_heatmap_only_for_a_two_dimensional_grid(tmp_path, overrides, drawn):
    _records(tmp_path, [(o, 0.5) for o in overrides])
    result = summary.write_sweep_summary(tmp_path)
    assert (result["heatmap"] is not None) == drawn == (tmp_path / "sweep_heatmap.png").exists()


def test_a_baseline_that_cannot_be_read_fails_before_any_job(tmp_path):
    callback = sweep.LARVSweepCallback(baseline=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="hydra.callbacks.larv_sweep.baseline=.*missing"):
        callback.on_multirun_start(OmegaConf.create({}))
    with pytest.raises(TypeError, match="baseline"):
        sweep.LARVSweepCallback(baseline=3)


def test_run_summary_lines():
    report = {"a": {"accuracy": 0.25}, "b": {"accuracy": 0.5}, "average": {"accuracy": 0.375}}
    record = {"base_method": {"_target_": "fusion_bench.method.ISO_C_Merge", "scaling_factor": 1.5},
              "gate": "tiered", "tiers": [0.6, 1.0, 1.2], "blocks": [{"scale": 0.6}, {"scale": 1.0}, {"scale": 1.2}]}
    lines = summary.run_summary_lines(report, record, Path("/x"), Path("/x/program_report.json"))
    assert lines[0] == "LARV run summary: ISO_C_Merge(scaling_factor=1.5) + LARV (gate=tiered, tiers=[0.6, 1.0, 1.2])"
    assert lines[1:4] == ["  average accuracy: 37.50 %", "    a: 25.00 %", "    b: 50.00 %"]
    assert lines[4] == "  λ per block (0..2, shallow to deep): 0.6 1 1.2"
    assert lines[5] == "  per-block record: /x/larv_layers.{json,csv,png}"


def test_run_summary_names_the_merger_as_run_and_the_gate_settings_used():
    record = {"base_method": {"_target_": "fusion_bench.method.TaskArithmeticAlgorithm", "scaling_factor": 0.3},
              "base_method_used": {"_target_": "fusion_bench.method.TaskArithmeticAlgorithm", "scaling_factor": 1.0},
              "gate": "lines", "gate_settings": {"lines_alpha": 0.12500000001, "lines_beta": 1.0},
              "apply": "pre", "apply_used": "post", "blocks": [{"scale": 0.125}, {"scale": 1.125}]}
    lines = summary.run_summary_lines({"average": {"accuracy": 0.5}}, record, Path("/x"), None)
    assert lines[0] == ("LARV run summary: TaskArithmeticAlgorithm(scaling_factor=1.0) + LARV (gate=lines, "
                        "lines_alpha=0.125, lines_beta=1, apply=pre (run as post))")


def test_jobs_that_shared_a_log_dir_show_no_results(tmp_path, caplog):
    _records(tmp_path, [(["method.eta=1"], 0.5), (["method.eta=2"], 0.6), (["method.eta=3"], 0.7)])
    for num in (0, 1):  # jobs 0 and 1 wrote into one folder (a fixed path.log_dir=...)
        rec = json.loads((tmp_path / str(num) / summary.JOB_RECORD).read_text())
        rec.update(log_dir=str(tmp_path / "shared"), report=str(tmp_path / "1" / "program_report.json"))
        (tmp_path / str(num) / summary.JOB_RECORD).write_text(json.dumps(rec))
    rows = summary.write_sweep_summary(tmp_path)["rows"]
    assert [(r["status"], r.get("average")) for r in rows] == [
        ("completed, shared log dir", None), ("completed, shared log dir", None), ("completed", 0.7)]
    assert "Jobs [0, 1] share path.log_dir" in caplog.text
