"""Issue 6 (LARV's cost next to its base merger): the benchmark script's CI smoke run, and the
performance options of ``LARVAlgorithm`` (``diagnostics_precision``, ``rank_cache``, ``rank_cache_dir``).

The exactness of the fast diagnostics path against the oracle is covered in
tests/test_diagnostics.py.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion_bench_larv.algorithm import LARVAlgorithm
from fusion_bench_larv.defaults import BASE_MERGERS
from fusion_bench_larv.rank_cache import process_rank_cache
from tiny_models import TinyPool

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_overhead.py"
RESULT_FIELDS = ("base_s", "larv_s", "diag_s", "scale_s", "added_s", "ratio", "sections_ratio")


def parse_results(stdout: str):
    rows = []
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            rows.append(dict(re.findall(r"(\w+)=(\S+)", line[len("RESULT "):])))
    return rows


def test_bench_script_smoke_run_vit_b32_two_tasks(tmp_path):
    """ViT-B/32-sized matrices (768 / 3072 wide), 2 blocks, 2 tasks, one repeat: < 60 s."""
    cmd = [sys.executable, str(SCRIPT), "--backbone", "vit-b-32", "--layers", "2", "--tasks", "2",
           "--merger", "iso_c", "task_arithmetic", "--repeats", "1", "--threads", "1",
           "--json", str(tmp_path / "bench.json")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = parse_results(proc.stdout)
    assert [r["merger"] for r in rows] == ["iso_c", "task_arithmetic"]
    for row in rows:
        assert (row["backbone"], row["tasks"], row["device"], row["threads"]) == (
            "vit-b-32", "2", "cpu", "1")
        values = {k: float(row[k]) for k in RESULT_FIELDS}
        assert all(math.isfinite(v) for v in values.values()), row
        assert values["base_s"] > 0 and values["larv_s"] > 0 and values["diag_s"] > 0
        assert values["ratio"] == pytest.approx(values["added_s"] / values["base_s"], rel=1e-2)
    assert (tmp_path / "bench.json").exists()


def test_bench_memory_helpers():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_overhead
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rss = bench_overhead._proc_status_kib("VmRSS")
    assert rss > 0
    # the peak counter (reset to the current RSS where the kernel allows it) is never below it
    assert isinstance(bench_overhead._reset_peak_rss(), bool)
    assert bench_overhead._proc_status_kib("VmHWM") >= rss * 0.5
    args = bench_overhead.parse_args(["--backbone", "vit-l-14", "--tasks", "20", "--merger",
                                      "iso_c", "tsvm", "--device", "cuda", "--rank-cache", "warm"])
    assert (args.backbone, args.tasks, args.merger, args.device) == ("vit-l-14", 20,
                                                                     ["iso_c", "tsvm"], "cuda")


# --- LARVAlgorithm's performance options -------------------------------------------------------


@pytest.fixture(scope="module")
def pools():
    return TinyPool(num_tasks=3)


def run_larv(pool, **kwargs):
    torch.manual_seed(0)
    algo = LARVAlgorithm(base_method=BASE_MERGERS["task_arithmetic"], **kwargs)
    return algo.run(pool), algo


def test_rank_cache_and_disk_cache_do_not_change_the_result(pools, tmp_path):
    _, uncached = run_larv(pools(), rank_cache=False)
    process_rank_cache().clear()
    _, cold = run_larv(pools())
    _, warm = run_larv(pools())  # the process-wide cache now holds every pretrained rank
    assert len(process_rank_cache()) > 0
    _, on_disk = run_larv(pools(), rank_cache_dir=str(tmp_path / "ranks"))
    assert len(list((tmp_path / "ranks").glob("*.json"))) > 0
    for algo in (cold, warm, on_disk):
        assert algo.record["blocks"] == uncached.record["blocks"]


def test_approximate_rank_method_is_close_to_exact(pools):
    _, exact = run_larv(pools(), rank_cache=False)
    _, approx = run_larv(pools(), diagnostics_precision="approximate", rank_cache=False)
    for a, b in zip(approx.record["blocks"], exact.record["blocks"]):
        assert a["e"] == pytest.approx(b["e"], rel=1e-2)
        assert a["c"] == pytest.approx(b["c"], rel=1e-2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(diagnostics_precision="randomized"), ValueError, "diagnostics_precision"),
        (dict(rank_cache="yes"), TypeError, "rank_cache"),
        (dict(rank_cache_dir=3), TypeError, "rank_cache_dir"),
        (dict(rank_cache_dir=""), TypeError, "rank_cache_dir"),
        (dict(rank_cache=False, rank_cache_dir="/tmp/x"), ValueError, "rank_cache_dir"),
    ],
)
def test_bad_performance_options_raise_naming_the_key(kwargs, error, match):
    with pytest.raises(error, match=match):
        LARVAlgorithm(base_method=BASE_MERGERS["task_arithmetic"], **kwargs)
