"""``scripts/bench_towers.py`` (``build --jobs``'s speed-up), run on a down-sized build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fusion_bench_larv.synth.build import build
from fusion_bench_larv.synth.tasks import suite_tasks

from conftest import tiny_recipe

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_towers.py"


def test_bench_towers_times_both_ways_and_finds_the_same_weights(tmp_path):
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=3)
    build(list(suite_tasks(2)), cache_dir=tmp_path, recipe=recipe)
    done = subprocess.run([sys.executable, str(SCRIPT), "--tasks", "2", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2].startswith("2 tower(s): one by one ") and ", 2 processes " in lines[-2] and " ratio " in lines[-2]
    assert lines[-1] == "towers byte for byte the same in both runs: yes; as the build's own: yes"
    bad = subprocess.run([sys.executable, str(SCRIPT), "--jobs", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--jobs >= 2" in bad.stderr
