"""``reproduce-larv depth``: tuned rows chosen on validation only, the two phases, the depth table."""

import dataclasses
import json
from pathlib import Path

import pytest

from fusion_bench_larv.paper import experiments, reproduce
from fusion_bench_larv.paper.collect import Run
from fusion_bench_larv.paper.select import Tuned, choose, selection_records, winner_jobs
from test_reproduce import dry_run, harness_args, read_csv_rows


def fake_run(overrides, accuracy, taskpool=None):
    ov = list(overrides) + ([f"taskpool={taskpool}"] if taskpool else [])
    return Run("x", {}, {"average": {"accuracy": accuracy}}, None, ov)


TUNED = Tuned("bare_tuned", (("modelpool", "tinyclip_synth8"), ("method", "task_arithmetic")),
              "method.scaling_factor", ("0.1", "0.2", "0.3"), "larv/tinyclip_synth8_val")


def test_choose_takes_the_best_validation_value_and_the_first_on_a_tie():
    assert choose(["a", "b", "c"], [0.5, 0.7, 0.7]) == "b"
    assert choose(["a", "b"], [0.5, None]) is None  # an unfinished grid chooses nothing
    assert choose([], []) is None


def test_winners_are_chosen_from_validation_reports_never_from_test():
    base = ["modelpool=tinyclip_synth8", "method=task_arithmetic"]
    runs = [fake_run(base + [f"method.scaling_factor={v}"], acc, "larv/tinyclip_synth8_val")
            for v, acc in (("0.1", 0.50), ("0.2", 0.61), ("0.3", 0.55))]
    # test jobs of the same values, where 0.3 is best: they must not move the choice
    runs += [fake_run(base + [f"method.scaling_factor={v}"], acc) for v, acc in (("0.1", 0.1), ("0.3", 0.9))]
    jobs, missing = winner_jobs([TUNED], runs)
    assert missing == []
    assert [dict(j.overrides) for j in jobs] == [{"modelpool": "tinyclip_synth8", "method": "task_arithmetic",
                                                  "method.scaling_factor": "0.2", "+tuned": "bare_tuned"}]
    record = selection_records([TUNED], runs)[0]
    assert record["selected"] == "0.2" and [g["val_accuracy"] for g in record["grid"]] == [0.50, 0.61, 0.55]


def test_an_unfinished_validation_grid_is_reported_not_guessed():
    runs = [fake_run(["modelpool=tinyclip_synth8", "method=task_arithmetic", "method.scaling_factor=0.1"], 0.5,
                     "larv/tinyclip_synth8_val")]
    jobs, missing = winner_jobs([TUNED], runs)
    assert jobs == [] and len(missing) == 1 and "bare_tuned" in missing[0]


def test_depth_dry_run_lists_fixed_rows_and_validation_grids(capsys):
    commands, jobs = dry_run(capsys, "depth", "--suite", "tinyclip", "--tasks", "8", "--mergers", "task_arithmetic",
                             "ties_merging")
    val = [j for j in jobs if j.get("taskpool") == "larv/tinyclip_synth8_val"]
    test = [j for j in jobs if "taskpool" not in j]
    # fixed rows on test: bare, LARV, rho=0, depth tiers, linear ramp
    assert len(test) == 2 * 5
    assert {j.get("method.rho") for j in test} == {None, "0.0"}
    # validation grids: scale (10), LiNeS beta (10; TIES 15), tiers (9)
    assert len(val) == (10 + 10 + 9) + (10 + 15 + 9)
    assert all("+tuned" not in j for j in jobs)  # tuned test jobs are planned after phase 1
    lines = [j for j in val if j.get("method.gate") == "lines"]
    assert {j["method.lines_alpha"] for j in lines} == {"auto"}
    out = capsys.readouterr().out
    reproduce.main(["depth", "--suite", "tinyclip", "--tasks", "8", "--mergers", "task_arithmetic", "--dry-run"])
    assert "then 3 tuned rows on test" in capsys.readouterr().out


def test_real_pools_use_the_validation_twin_of_their_task_pool():
    assert experiments.val_taskpool("fusionbench", "b32", 8) == "CLIPVisionModelTaskPool/clip-vit-classification_TA8_val"
    assert experiments.val_taskpool("fusionbench", "l14", 20) == \
        "CLIPVisionModelTaskPool/clip-vit-classification_TALL20_L14_val"


@pytest.mark.slow
def test_depth_end_to_end_on_the_tiny_suite(tiny_synth, tmp_path, monkeypatch):
    """Both phases through the real CLI on down-sized grids, then the depth table."""
    from fusion_bench_larv.paper import tables

    monkeypatch.setattr(experiments, "LINES_BETAS", (0.5, 1.0))
    monkeypatch.setattr(experiments, "TUNED_TIERS", ((0.6, 1.0, 1.2), (0.4, 1.0, 1.8)))
    ta = experiments.MERGERS["task_arithmetic"]
    monkeypatch.setitem(experiments.MERGERS, "task_arithmetic", dataclasses.replace(ta, scale_grid=(0.3, 1.0)))
    output = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    argv = ["depth", "--suite", "tinyclip", "--tasks", "8", "--mergers", "task_arithmetic", *harness_args(tiny_synth, output)]
    assert reproduce.main(argv) == 0
    selection = json.loads((output / "selection_depth.json").read_text())["rows"]
    assert {r["row"] for r in selection} == {"bare_tuned", "lines", "larv_tuned_tiers"}
    tables.make_tables(output, tmp_path / "tables")
    depth = {r["row"]: r for r in read_csv_rows(tmp_path / "tables" / "depth.csv")}
    assert set(depth) == {"bare", "bare_tuned", "larv", "larv_rho0", "larv_depth_tiers", "larv_tuned_tiers", "lines",
                          "linear_ramp"}
    for record in selection:
        row = depth[record["row"]]
        best = max(record["grid"], key=lambda g: g["val_accuracy"])
        assert row["selected"] == record["selected"] == best["value"]
        assert float(row["val_accuracy"]) == pytest.approx(100 * best["val_accuracy"], abs=0.01)
    # summary.csv keeps only the fixed-settings test jobs: no validation job, no tuned row
    summary = read_csv_rows(tmp_path / "tables" / "summary.csv")
    assert len(summary) == 5
    assert all(r["score_depth_spearman"] for r in summary if r["larv"] == "True")
    md = Path(tmp_path / "tables" / "tables.md").read_text()
    assert "LARV vs depth priors, TinyCLIP, 8 tasks" in md and "best on test" in md
