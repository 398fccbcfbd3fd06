"""Shared fixtures: a down-sized ``tinyclip_synth`` build and a ``fusion_bench`` CLI runner.

Everything is written under pytest's tmp dirs: ``FUSION_BENCH_LARV_CACHE`` points into one for
the whole session, and CLI runs get ``path.log_dir=<tmp>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from fusion_bench_larv.paper.reproduce import fusion_bench_executable  # noqa: F401 (the tests' CLI)
from fusion_bench_larv.synth.build import Assets, Recipe, build
from hub_fixture import HubCache, build_hub_cache
from fusion_bench_larv.synth.model import ModelSize
from fusion_bench_larv.synth.tasks import suite_tasks

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
}


def tiny_recipe(layers: int = 4, suite: int = 4, **overrides) -> Recipe:
    """A seconds-long recipe with the real code path: hidden 32, ``layers`` vision blocks."""
    model = ModelSize(
        vision_hidden=32,
        vision_layers=layers,
        vision_heads=2,
        text_hidden=32,
        text_layers=2,
        text_heads=2,
        projection_dim=32,
        max_text_len=96,
    )
    kw = dict(
        seed=0,
        suite=suite,
        n_train=64,
        n_test=40,
        pretrain_per_task=48,
        pretrain_steps=12,
        pretrain_batch=64,
        pretrain_lr=3e-3,
        finetune_steps=8,
        finetune_batch=32,
        finetune_lr=3e-3,
        # the tests' schedule predates the version-4 defaults: contrastive-heavy pretraining,
        # OpenAI CLIP's temperature, no task domains, one pretraining thread
        pretrain_label_weight=1.0,
        finetune_logit_scale=100.0,
        task_grating=0.0,
        task_colour_mix=0.0,
        pretrain_threads=1,
        model=model,
    )
    kw.update(overrides)
    return Recipe(**kw)


def compose_config(config_dir, overrides: Sequence[str] = ()):
    """Compose ``fabric_model_fusion`` with ``config_dir`` as the primary config dir (plus the
    search-path plugin), in a fresh Hydra global state that is cleared again afterwards."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose("fabric_model_fusion", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def run_fusion_bench(overrides: Sequence[str], log_dir: Path, timeout: float = 300, cwd: Optional[Path] = None) -> dict:
    """Run the real ``fusion_bench`` CLI offline; return the parsed ``program_report.json``.

    Raises ``AssertionError`` with the tail of the output when the command fails.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*fusion_bench_executable(), *overrides, f"path.log_dir={log_dir}", "print_config=false"]
    env = {**os.environ, **OFFLINE_ENV}
    proc = subprocess.run(cmd, cwd=cwd or log_dir, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    report = log_dir / "program_report.json"
    assert report.exists(), f"no report at {report}; output:\n{output[-4000:]}"
    return json.loads(report.read_text())


def run_fusion_bench_failing(overrides: Sequence[str], log_dir: Path, timeout: float = 300) -> str:
    """Run the ``fusion_bench`` CLI offline, expect it to fail before any output, and return its
    output (stdout + stderr)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*fusion_bench_executable(), *overrides, f"path.log_dir={log_dir}"]
    proc = subprocess.run(cmd, cwd=log_dir, env={**os.environ, **OFFLINE_ENV},
                          capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{' '.join(cmd)} succeeded:\n{output[-4000:]}"
    for name in ("program_report.json", "larv_layers.json", "larv_layers.csv", "larv_layers.png"):
        assert not (log_dir / name).exists(), f"{name} written before the error"
    return output


@dataclass
class TinySynth:
    """A down-sized synthetic benchmark (see the ``tiny_synth`` fixture)."""

    cache_dir: Path
    tasks: List[str]
    recipe: Recipe
    assets: Assets = field(init=False)

    def __post_init__(self):
        self.assets = Assets(self.cache_dir, self.recipe.seed)

    @property
    def model_dirs(self) -> Dict[str, str]:
        """``{"_pretrained_": dir, task: dir, ...}`` (``CLIPVisionModel.from_pretrained`` dirs)."""
        return {"_pretrained_": str(self.assets.pretrained)} | {t: str(self.assets.finetuned(t)) for t in self.tasks}

    def load_models(self) -> dict:
        """Freshly loaded vision towers, ready for ``BaseModelPool(tiny_synth.load_models())``."""
        from transformers import CLIPVisionModel

        return {name: CLIPVisionModel.from_pretrained(path) for name, path in self.model_dirs.items()}

    def overrides(self, modelpool: str = "tinyclip_synth8") -> List[str]:
        """Hydra overrides that point ``modelpool=<modelpool>`` and its task pool at this build."""
        tasks = "[" + ",".join(self.tasks) + "]"
        return [
            f"modelpool={modelpool}",
            f"modelpool.tasks={tasks}",
            f"modelpool.cache_dir={self.cache_dir}",
            "modelpool.build_if_missing=false",
            f"taskpool.tasks={tasks}",
            "taskpool.dataloader_kwargs.batch_size=64",
        ]

    def run_cli(self, *overrides: str, log_dir: Path, modelpool: str = "tinyclip_synth8", timeout: float = 300) -> dict:
        """``fusion_bench <pool overrides> <overrides> path.log_dir=<log_dir>`` → report dict."""
        return run_fusion_bench([*self.overrides(modelpool), *overrides], log_dir, timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def _offline_tmp_cache(tmp_path_factory):
    """Offline HF + a session-private asset cache, for this process and its subprocesses."""
    mp = pytest.MonkeyPatch()
    for key, value in OFFLINE_ENV.items():
        mp.setenv(key, value)
    mp.setenv("FUSION_BENCH_LARV_CACHE", str(tmp_path_factory.mktemp("larv_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> TinySynth:
    """A down-sized ``tinyclip_synth`` build (a few seconds on 2 cores), shared by the session.

    Same code path as the real build (``fusion_bench_larv.synth.build.build``) with
    ``tiny_recipe()``: the first 4 tasks (shapes, colors, digits, handwritten_digits), a CLIP
    with hidden size 32 and 4 vision blocks, 64 train / 40 test images per task, a few
    pretraining and fine-tuning steps. The fine-tuned towers differ from the pretrained one,
    and from each other (each was trained on its own task).

    Use it as:

    - ``tiny_synth.model_dirs``: ``{"_pretrained_": dir, "<task>": dir}`` of
      ``CLIPVisionModel.save_pretrained`` folders;
    - ``BaseModelPool(tiny_synth.load_models())``: the same, loaded (fresh modules per call);
    - ``tiny_synth.overrides()``: Hydra overrides selecting ``modelpool=tinyclip_synth8`` and
      its task pool, pointed at this build (never builds: ``build_if_missing=false``);
    - ``tiny_synth.run_cli("method=task_arithmetic", log_dir=tmp_path / "run")``: runs the
      real ``fusion_bench`` CLI offline and returns the parsed report JSON
      (``report[task]["accuracy"]``, ``report["average"]["accuracy"]``);
    - ``tiny_synth.assets``: all paths (``.pretrained``, ``.data(task, split)``, ...).

    For another depth, build your own with ``build(tasks, cache_dir, tiny_recipe(layers=6))``.
    """
    cache_dir = tmp_path_factory.mktemp("tiny_synth")
    recipe = tiny_recipe()
    tasks = list(suite_tasks(recipe.suite))
    build(tasks, cache_dir=cache_dir, recipe=recipe)
    return TinySynth(cache_dir=cache_dir, tasks=tasks, recipe=recipe)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> HubCache:
    """A Hugging Face cache with tiny models and data sets under FusionBench's real hub ids.

    About 6 s on 2 cores, shared by the session; see ``tests/hub_fixture.py`` for what is in it.
    ``hub_cache.env`` points a subprocess at it (``HF_HOME``, offline flags and
    ``FUSION_BENCH_CACHE_DIR``, FusionBench's ``path.cache_dir``); ``run_hub_cli`` uses it.
    """
    return build_hub_cache(tmp_path_factory.mktemp("hub"))


def run_hub_cli(args: Sequence[str], hub: HubCache, cwd: Path, timeout: float = 600) -> str:
    """Run ``args`` (a console script and its arguments) against ``hub``, from ``cwd``.

    Returns the output. Fails with its tail when the command fails.
    """
    exe = Path(sys.executable).with_name(args[0])
    cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
    env = {**os.environ, **OFFLINE_ENV, **hub.env}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output
