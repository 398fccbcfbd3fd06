"""The real ``fusion_bench`` CLI, offline, on the down-sized synthetic benchmark."""

from __future__ import annotations

import math

import pytest


def assert_complete_report(report: dict, tasks) -> None:
    for task in tasks:
        assert task in report, f"no result for {task}: {sorted(report)}"
        assert math.isfinite(report[task]["accuracy"]) and 0.0 <= report[task]["accuracy"] <= 1.0
        assert math.isfinite(report[task]["loss"])
    average = sum(report[t]["accuracy"] for t in tasks) / len(tasks)
    assert report["average"]["accuracy"] == pytest.approx(average)


@pytest.mark.parametrize(
    "method",
    [
        ["method=task_arithmetic", "method.scaling_factor=0.3"],
        ["method=isotropic_merging/iso_c", "method.scaling_factor=1.5"],
    ],
    ids=["task_arithmetic", "iso_c"],
)
def test_merge_and_evaluate_through_cli(tiny_synth, tmp_path, method):
    report = tiny_synth.run_cli(*method, log_dir=tmp_path / "run")
    assert_complete_report(report, tiny_synth.tasks)


def test_individual_model_through_cli(tiny_synth, tmp_path):
    """``modelpool.individual=<task>`` + ``method=dummy`` evaluates that fine-tuned tower."""
    task = tiny_synth.tasks[0]
    report = tiny_synth.run_cli("method=dummy", f"modelpool.individual={task}", log_dir=tmp_path / "run")
    assert_complete_report(report, tiny_synth.tasks)
