"""LARV through the real `fusion_bench` CLI, offline, on the down-sized synthetic benchmark."""

import csv
import json
import math

import pytest

from conftest import run_fusion_bench_failing


def assert_complete_larv_report(report, log_dir, tasks, num_blocks, gate):
    # FusionBench's flat report layout, as for a bare merger; LARV's record is in larv_layers.json
    assert set(report) == set(tasks) | {"average", "model_info"}
    for task in tasks:
        assert math.isfinite(report[task]["accuracy"]), task
    assert math.isfinite(report["average"]["accuracy"])
    larv = json.loads((log_dir / "larv_layers.json").read_text())
    assert larv["gate"] == gate
    assert larv["num_blocks"] == num_blocks == len(larv["blocks"])
    for row in larv["blocks"]:
        for key in ("e", "c", "z", "s", "scale"):
            assert math.isfinite(row[key]), (key, row)
    return larv


@pytest.mark.parametrize("gate", ["tiered", "continuous", "linear_depth"])
@pytest.mark.parametrize("method", ["larv_iso_c", "larv_tsvm", "larv_ties_merging"])
def test_larv_method_end_to_end(tiny_synth, tmp_path, method, gate):
    report = tiny_synth.run_cli(f"method={method}", f"method.gate={gate}", log_dir=tmp_path)
    larv = assert_complete_larv_report(report, tmp_path, tiny_synth.tasks, tiny_synth.recipe.model.vision_layers,
                                       gate)
    if gate == "tiered":
        assert {row["scale"] for row in larv["blocks"]} == {0.6, 1.0, 1.2}
    # the per-block table next to FusionBench's report: JSON (read above), CSV, plot
    with open(tmp_path / "larv_layers.csv") as fp:
        rows = list(csv.DictReader(fp))
    assert [float(r["scale"]) for r in rows] == [row["scale"] for row in larv["blocks"]]
    assert (tmp_path / "larv_layers.png").read_bytes()[:4] == b"\x89PNG"


def test_identity_gate_matches_the_bare_merger_through_the_cli(tiny_synth, tmp_path):
    bare = tiny_synth.run_cli("method=isotropic_merging/iso_c", "method.scaling_factor=1.5", log_dir=tmp_path / "bare")
    larv = tiny_synth.run_cli("method=larv_iso_c", "method.gate=identity", log_dir=tmp_path / "larv")
    for task in tiny_synth.tasks:
        assert larv[task]["accuracy"] == bare[task]["accuracy"]


def test_bad_key_fails_before_any_output(tiny_synth, tmp_path):
    output = run_fusion_bench_failing([*tiny_synth.overrides(), "method=larv_iso_c", "method.tiers=[1.0]"], tmp_path)
    assert "tiers needs at least 2 levels" in output
