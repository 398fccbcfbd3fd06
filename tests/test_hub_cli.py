"""The users' commands on FusionBench's real configs, through the real CLI, against a hub-shaped cache.

Every command is run exactly as a user types it, plus ``path.log_dir=<tmp>``: the pools and task
pools load their hub ids (``openai/clip-vit-*``, ``tanganke/clip-vit-*_<task>``,
``tanganke/<dataset>``, ...) from the ``hub_cache`` fixture, offline. Each test checks the
report's tasks, the LARV record's block count (each backbone's tiny CLIP has its own depth) and
the text tower the task pool used (each backbone's CLIP has its own vision width, so a vision
tower evaluated with another backbone's text tower would crash; the config names it too). The
commands run from an empty folder that must stay empty, and the exact users' command from the
repository root, which must stay unchanged.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from omegaconf import OmegaConf

from conftest import run_hub_cli
from hub_fixture import CLIP_BACKBONES, TALL20

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_TASKS = {"TA8": 8, "TALL14": 14, "TALL20": 20}
ALIASES = [f"{b}_{s}" for b in CLIP_BACKBONES for s in NUM_TASKS]


def task_results(report: dict) -> Dict[str, dict]:
    """The task pool's entries of ``program_report.json`` (FusionBench's flat layout
    ``{task: ..., "average": ...}``; ``model_info`` is not a dict of scores)."""
    return report


def reported_tasks(report: dict) -> List[str]:
    """The tasks with a score (accuracy; Spearman's ρ for GLUE's STS-B), in report order."""
    return [k for k, v in task_results(report).items() if k != "average" and isinstance(v, dict)
            and ("accuracy" in v or "spearman_rho" in v)]


def larv_record(log_dir: Path) -> Optional[dict]:
    path = log_dir / "larv_layers.json"
    return json.loads(path.read_text()) if path.exists() else None


def text_tower(log_dir: Path) -> str:
    """The CLIP the task pool built its zero-shot heads (and processor) from, per the job's config."""
    taskpool = OmegaConf.load(log_dir / "config.yaml").taskpool
    model = taskpool.clip_model.pretrained_model_name_or_path
    assert taskpool.processor.pretrained_model_name_or_path == model
    return model


@pytest.fixture
def empty_cwd(tmp_path):
    """A working directory that must still be empty after the test (no cache or output lands there)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    yield cwd
    left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    assert not left, f"the command wrote into its working directory: {left[:10]}"


def run_alias(hub, method: str, alias: str, log_dir: Path, cwd: Path) -> dict:
    run_hub_cli(["fusion_bench", f"method={method}", f"modelpool={alias}", f"path.log_dir={log_dir}"], hub, cwd)
    return json.loads((log_dir / "program_report.json").read_text())


def check_clip_run(hub, alias: str, log_dir: Path, report: dict, larv: bool) -> None:
    backbone, setting = alias.rsplit("_", 1)
    expected = list(TALL20[: NUM_TASKS[setting]])
    assert reported_tasks(report) == expected
    results = task_results(report)
    for task in expected:
        assert math.isfinite(results[task]["accuracy"]) and 0.0 <= results[task]["accuracy"] <= 1.0, task
    mean = sum(results[t]["accuracy"] for t in expected) / len(expected)
    assert results["average"]["accuracy"] == pytest.approx(mean)
    assert text_tower(log_dir) == f"openai/{backbone}"
    record = larv_record(log_dir)
    if larv:
        assert record is not None, f"no larv_layers.json in {log_dir}"
        assert record["num_blocks"] == len(record["blocks"]) == hub.clip_blocks(backbone)
        assert [b["prefix"] for b in record["blocks"]] == [
            f"vision_model.encoder.layers.{i}." for i in range(hub.clip_blocks(backbone))
        ]
    else:
        assert record is None, "a bare merger wrote a LARV record"


def _repo_state() -> List[str]:
    """Top-level entries of the repository plus everything under ``config/`` (where Hydra reads)."""
    return sorted(os.listdir(REPO_ROOT)) + sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "config").rglob("*")
                                                 if "__pycache__" not in p.parts)


def test_exact_users_command_from_repository_root(hub_cache, tmp_path):
    """``fusion_bench method=larv_iso_c modelpool=clip-vit-base-patch32_TA8``, from the repo root."""
    before = _repo_state()
    log_dir = tmp_path / "run"
    report = run_alias(hub_cache, "larv_iso_c", "clip-vit-base-patch32_TA8", log_dir, cwd=REPO_ROOT)
    check_clip_run(hub_cache, "clip-vit-base-patch32_TA8", log_dir, report, larv=True)
    assert _repo_state() == before, "the run changed the repository folder"


#: aliases run by the tests below (the three mergers); the others get LARV + Iso-C here
TALL_ALIASES = ["clip-vit-base-patch16_TALL14", "clip-vit-large-patch14_TALL20"]


@pytest.mark.slow
@pytest.mark.parametrize("alias", [a for a in ALIASES if a != "clip-vit-base-patch32_TA8" and a not in TALL_ALIASES])
def test_every_alias_merges_and_evaluates(hub_cache, tmp_path, empty_cwd, alias):
    """With the exact users' command (B/32 TA8) and the tests below (B/16 TALL14, L/14 TALL20),
    all 9 aliases merge and evaluate; these 6 with LARV + Iso-C."""
    log_dir = tmp_path / "run"
    report = run_alias(hub_cache, "larv_iso_c", alias, log_dir, empty_cwd)
    check_clip_run(hub_cache, alias, log_dir, report, larv=True)


@pytest.mark.slow
@pytest.mark.parametrize("alias", TALL_ALIASES)
@pytest.mark.parametrize("method", ["larv_tsvm", "larv_ties_merging", "isotropic_merging/iso_c"])
def test_mergers_on_tall_aliases(hub_cache, tmp_path, empty_cwd, alias, method):
    log_dir = tmp_path / "run"
    report = run_alias(hub_cache, method, alias, log_dir, empty_cwd)
    check_clip_run(hub_cache, alias, log_dir, report, larv=method.startswith("larv_"))
