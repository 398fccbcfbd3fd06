"""Every shipped config/method/larv_*.yaml composes, instantiates, and agrees with the code."""

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config

from fusion_bench.utils import instantiate
from fusion_bench_larv.algorithm import LARV_METHODS, LARVAlgorithm
from fusion_bench_larv.defaults import BASE_MERGERS
from fusion_bench_larv.runs import summary
from fusion_bench_larv.settings import SETTING_NAMES, SETTINGS, SWEEP_KEYS

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"
METHOD_CONFIGS = sorted(p.stem for p in (REPO_CONFIG / "method").glob("larv_*.yaml"))
LARV_KEYS = list(SETTING_NAMES)


def compose_method(name, *overrides):
    return compose_config(REPO_CONFIG, [f"method={name}", *overrides]).method


def test_one_config_per_named_variant():
    assert METHOD_CONFIGS == sorted(LARV_METHODS)
    for name in ["larv_simple_average", "larv_task_arithmetic", "larv_ties_merging", "larv_tsvm",
                 "larv_iso_c", "larv_iso_cts", "larv_dare_task_arithmetic", "larv_wudi", "larv_magmax"]:
        assert name in METHOD_CONFIGS


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_config_composes_and_instantiates(name):
    cfg = compose_method(name)
    algo = instantiate(cfg, _recursive_=False)
    assert type(algo) is LARV_METHODS[name]
    # the YAML's defaults are the declaration's (one source of truth, repeated for Hydra)
    for setting in SETTINGS:
        assert OmegaConf.to_container(cfg)[setting.name] == setting.default, setting.name
    # the base merger and its hyperparameters are the registry's
    assert OmegaConf.to_container(cfg.base_method) == BASE_MERGERS[name[len("larv_"):]]


def test_every_key_is_overridable_from_the_command_line():
    cfg = compose_method(
        "larv_iso_c", "method.gate=continuous", "method.tiers=[0.5,1.0,1.4]", "method.eta=2.0",
        "method.rho=0", "method.tier_assignment=depth", "method.conflict=pairwise",
        "method.source=task_vectors", "method.apply=pre", "method.non_block_scale=0.9",
        "method.amplitude=0.3", "method.steepness=2", "method.min_scale=0.7", "method.max_scale=1.3",
        "method.lines_alpha=0.5", "method.lines_beta=0.8", "method.block_pattern='^blocks\\.(\\d+)\\.'",
        "method.base_method.scaling_factor=1.0",
    )
    algo = instantiate(cfg, _recursive_=False)
    assert (algo.gate, algo.tiers, algo.eta, algo.rho) == ("continuous", [0.5, 1.0, 1.4], 2.0, 0.0)
    assert (algo.tier_assignment, algo.conflict, algo.source, algo.apply) == ("depth", "pairwise", "task_vectors", "pre")
    assert (algo.non_block_scale, algo.amplitude, algo.steepness) == (0.9, 0.3, 2.0)
    assert (algo.min_scale, algo.max_scale, algo.lines_alpha, algo.lines_beta) == (0.7, 1.3, 0.5, 0.8)
    assert algo.block_pattern == r"^blocks\.(\d+)\."
    assert algo.base_method.scaling_factor == 1.0


def test_bad_value_from_the_command_line_names_the_key():
    cfg = compose_method("larv_tsvm", "method.gate=stepwise")
    with pytest.raises(ValueError, match=r"gate must be one of \['tiered', 'continuous', 'linear_depth', "
                                         r"'lines', 'identity'\], got 'stepwise'"):
        instantiate(cfg, _recursive_=False)


def test_the_settings_are_declared_once_and_everything_agrees_with_the_declaration():
    """settings.SETTINGS is the one declaration: the signature, the shared YAML, the record, the
    sweep table's keys and the README's config reference follow it."""
    params = inspect.signature(LARVAlgorithm.__init__).parameters
    assert [p for p in params if p not in ("self", "base_method", "kwargs")] == list(SETTING_NAMES)
    for s in SETTINGS:
        default = params[s.name].default
        assert (list(default) if isinstance(default, tuple) else default) == s.default, s.name
        assert s.check(s.default) == s.default, s.name  # every default passes its own check
        assert s.whose in ("paper", "LiNeS", "ours") and s.help, s.name
    yaml = OmegaConf.to_container(OmegaConf.load(REPO_CONFIG / "method" / "larv" / "_defaults.yaml"))
    assert list(yaml) == list(SETTING_NAMES)
    assert list(LARV_METHODS["larv_iso_c"]().config_record()) == ["method", "base_method", *SETTING_NAMES]
    assert summary.LARV_KEYS == SWEEP_KEYS and set(SWEEP_KEYS) < set(SETTING_NAMES)
    readme = (REPO_CONFIG.parent / "README.md").read_text()
    reference = readme[readme.index("## Config reference"):readme.index("## Layout")]
    for s in SETTINGS:
        assert f"`{s.name}`" in reference, s.name


def test_a_renamed_key_points_to_its_new_name():
    with pytest.raises(TypeError, match=r"unknown key 'rank_method' = 'approximate' \(did you mean "
                                        r"'diagnostics_precision'\? It was renamed\.\)"):
        LARV_METHODS["larv_iso_c"](rank_method="approximate")
