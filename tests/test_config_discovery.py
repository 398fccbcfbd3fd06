"""Our configs are found by the `fusion_bench` CLI from the repository root and from anywhere else.

Composition is checked in-process with Hydra's compose API, using the same primary config dir
the `fusion_bench` CLI would pick (`$CWD/config` in the repository root, FusionBench's installed
`fusion_bench_config/` elsewhere), plus a few real CLI calls as subprocesses.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import compose_config
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_CONFIG = REPO_ROOT / "config"


def _fusion_bench_config_dir() -> Path:
    import fusion_bench_config

    return Path(list(fusion_bench_config.__path__)[0]).resolve()


PRIMARY_DIRS = {"repo_root": REPO_CONFIG, "elsewhere": _fusion_bench_config_dir()}

BACKBONES = {
    "base-patch32": ("openai/clip-vit-base-patch32", ""),
    "base-patch16": ("openai/clip-vit-base-patch16", "_B16"),
    "large-patch14": ("openai/clip-vit-large-patch14", "_L14"),
}
SETTINGS = {"TA8": 8, "TALL14": 14, "TALL20": 20}
TA8_TASKS = ["sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]


_compose = compose_config


@pytest.mark.parametrize("where", sorted(PRIMARY_DIRS))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_clip_alias_selects_pool_and_task_pool(where, backbone, setting):
    cfg = _compose(PRIMARY_DIRS[where], ["method=dummy", f"modelpool=clip-vit-{backbone}_{setting}"])
    hub_id, _ = BACKBONES[backbone]
    models = OmegaConf.to_container(cfg.modelpool.models)
    assert cfg.modelpool._target_ == "fusion_bench.modelpool.CLIPVisionModelPool"
    assert models.pop("_pretrained_") == hub_id
    assert len(models) == SETTINGS[setting]
    for task, model_id in models.items():
        assert model_id == f"tanganke/clip-vit-{backbone}_{task}"
    if setting == "TA8":
        assert list(models) == TA8_TASKS
    # the matching task pool: same tasks, zero-shot heads from the same CLIP
    assert cfg.taskpool._target_ == "fusion_bench.taskpool.CLIPVisionModelTaskPool"
    assert sorted(cfg.taskpool.test_datasets) == sorted(models)
    assert cfg.taskpool.base_model == hub_id
    assert cfg.taskpool.clip_model.pretrained_model_name_or_path == hub_id
    processor = cfg.modelpool.processor  # a hub id, or a from_pretrained config in some pools
    assert (processor if isinstance(processor, str) else processor.pretrained_model_name_or_path) == hub_id


@pytest.mark.parametrize("where", sorted(PRIMARY_DIRS))
def test_explicit_taskpool_on_the_command_line_wins(where):
    cfg = _compose(
        PRIMARY_DIRS[where],
        ["method=dummy", "modelpool=clip-vit-base-patch16_TALL14", "taskpool=dummy"],
    )
    assert cfg.taskpool._target_ == "fusion_bench.taskpool.DummyTaskPool"
    assert "base_model" not in cfg.taskpool


def test_our_primary_config_is_fusion_bench_s_with_modelpool_moved():
    ours = yaml.safe_load((REPO_CONFIG / "fabric_model_fusion.yaml").read_text())
    theirs = yaml.safe_load((_fusion_bench_config_dir() / "fabric_model_fusion.yaml").read_text())
    ours_defaults, theirs_defaults = ours.pop("defaults"), theirs.pop("defaults")
    # our two additions (fusion_bench_larv/runs/sweep.py): the per-job log dir and the callback
    assert ours.pop("path") == {"log_dir": "${larv.job_log_dir:'${path.output_dir}/${hydra:job.config_name}/"
                                           "${now:%Y-%m-%d_%H-%M-%S}'}"}
    assert ours.pop("hydra") == {"callbacks": {"larv_sweep": {
        "_target_": "fusion_bench_larv.runs.sweep.LARVSweepCallback", "baseline": None}}}
    # FusionBench's default log dir, which the resolver keeps outside a multirun
    fb_path = yaml.safe_load((_fusion_bench_config_dir() / "path" / "default.yaml").read_text())
    assert fb_path["log_dir"] == "${.output_dir}/${hydra:job.config_name}/${now:%Y-%m-%d_%H-%M-%S}"
    assert ours == theirs
    # same entries; only `modelpool` moved, to just after `taskpool`
    assert sorted(map(str, ours_defaults)) == sorted(map(str, theirs_defaults))
    keys = [next(iter(d)) if isinstance(d, dict) else d for d in ours_defaults]
    assert keys.index("modelpool") == keys.index("taskpool") + 1
    without = lambda ds: [d for d in ds if not (isinstance(d, dict) and "modelpool" in d)]
    assert without(ours_defaults) == without(theirs_defaults)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=task_arithmetic", "modelpool=CLIPVisionModelPool/clip-vit-base-patch32_TA8",
         "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8"],
        ["method=isotropic_merging/iso_c"],
    ],
)
def test_fusion_bench_s_own_commands_compose_the_same_from_both_places(overrides):
    here, there = (_compose(PRIMARY_DIRS[w], overrides) for w in ("repo_root", "elsewhere"))
    strip = lambda c: {k: v for k, v in OmegaConf.to_container(c).items() if k != "hydra"}
    assert strip(here) == strip(there)


def _cli_cfg_job(cwd, *overrides, pythonpath=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    exe = Path(sys.executable).with_name("fusion_bench")
    out = subprocess.run(
        [str(exe), "--cfg", "job", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return yaml.safe_load(out.stdout)


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_cli_headline_command_from_repo_root_and_elsewhere(where, tmp_path):
    cwd = REPO_ROOT if where == "repo_root" else tmp_path
    cfg = _cli_cfg_job(cwd, "method=isotropic_merging/iso_c", "modelpool=clip-vit-base-patch32_TA8")
    assert cfg["method"]["_target_"] == "fusion_bench.method.ISO_C_Merge"
    models = cfg["modelpool"]["models"]
    assert models["_pretrained_"] == "openai/clip-vit-base-patch32"
    assert [models[t] for t in TA8_TASKS] == [f"tanganke/clip-vit-base-patch32_{t}" for t in TA8_TASKS]
    assert sorted(cfg["taskpool"]["test_datasets"]) == sorted(TA8_TASKS)
    assert cfg["taskpool"]["base_model"] == "openai/clip-vit-base-patch32"


def test_cli_keeps_a_user_s_own_primary_config(tmp_path):
    """A user's own `config/` with its own primary config is not shadowed by ours."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fabric_model_fusion.yaml").write_text("marker: users_own\n")
    cfg = _cli_cfg_job(tmp_path)
    assert cfg == {"marker": "users_own"}


def test_non_editable_wheel_ships_configs_and_plugin(tmp_path):
    """A plain (non-editable) install of the wheel: the package, the config package and the
    search-path plugin come from the installed files, and the CLI finds `method=larv_*`."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO_ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("fusion_bench_larv-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    shipped = sorted(p.relative_to(target / "fusion_bench_larv_config").as_posix()
                     for p in (target / "fusion_bench_larv_config").rglob("*.yaml"))
    assert shipped == sorted(p.relative_to(REPO_CONFIG).as_posix() for p in REPO_CONFIG.rglob("*.yaml"))
    # the installed copies, not the checkout, are what Python imports with this path first
    probe = subprocess.run(
        [sys.executable, "-c", "import fusion_bench_larv, fusion_bench_larv_config, "
         "hydra_plugins.fusion_bench_larv_searchpath as p; "
         "print(fusion_bench_larv.__file__, fusion_bench_larv_config.__file__, p.__file__)"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)), capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert all(Path(f).is_relative_to(target) for f in probe.stdout.split()), probe.stdout
    cfg = _cli_cfg_job(tmp_path, "method=larv_iso_c", "modelpool=clip-vit-base-patch32_TA8", pythonpath=target)
    assert cfg["method"]["_target_"] == "fusion_bench_larv.algorithm.LARVIsoC"
    assert cfg["modelpool"]["models"]["_pretrained_"] == "openai/clip-vit-base-patch32"
    assert cfg["taskpool"]["base_model"] == "openai/clip-vit-base-patch32"
