"""Properties of the LARV wrapper around FusionBench's real mergers, on tiny in-memory models."""

import copy
import math

import pytest
import torch
from fusion_bench import BaseModelPool
from fusion_bench.utils import import_object, instantiate

import fusion_bench_larv.algorithm as algorithm_module
from fusion_bench_larv.algorithm import LARV_METHODS, LARVAlgorithm
from fusion_bench_larv.defaults import BASE_MERGERS, MERGERS
from tiny_models import NUM_LAYERS, TinyPool, fine_tuned, tiny_clip_vision

# Small iteration counts keep WUDI fast; everything else uses the shipped defaults.
BASE_OVERRIDES = {"wudi": {"iter_num": 5}}
HOMOGENEOUS = ["simple_average", "task_arithmetic", "tsvm", "iso_c", "iso_cts", "dare_task_arithmetic", "magmax"]


@pytest.fixture(scope="module")
def pools():
    return TinyPool(num_tasks=3)


@pytest.fixture(scope="module")
def pools64():
    """float64 weights: mergers' SVDs (TSV-M, Iso-C) then agree to ~1e-13 whatever the BLAS
    threading, so pre == post is checked at round-off level, not at float32's ~1e-4."""
    return TinyPool(num_tasks=3, dtype=torch.float64)


def base_config(merger: str):
    return {**BASE_MERGERS[merger], **BASE_OVERRIDES.get(merger, {})}


def run_bare(merger: str, pool: BaseModelPool):
    torch.manual_seed(0)  # DARE draws random masks
    return instantiate(base_config(merger), _recursive_=False).run(pool)


def run_larv(merger: str, pool: BaseModelPool, literal_pre: bool = False, **kwargs):
    """``literal_pre``: run ``apply: pre`` as the merger on θ0 + λ ⊙ τ_t even where the merger
    table lets it take the equivalent ``post`` path."""
    torch.manual_seed(0)
    algo = LARVAlgorithm(base_method=base_config(merger), **kwargs)
    if literal_pre:
        algo._pre_as_post = False
    return algo.run(pool), algo


def states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def is_block_key(key: str) -> bool:
    return key.startswith("vision_model.encoder.layers.")


@pytest.mark.parametrize("merger", sorted(BASE_MERGERS))
def test_identity_gate_reproduces_the_bare_merger_bit_for_bit(pools, merger):
    bare = run_bare(merger, pools())
    larv, algo = run_larv(merger, pools(), gate="identity")
    assert states_equal(bare, larv)
    assert [r["scale"] for r in algo.record["blocks"]] == [1.0] * NUM_LAYERS


@pytest.mark.parametrize("merger", ["task_arithmetic", "iso_c", "ties_merging"])
def test_zero_tier_gives_the_pretrained_weights_in_its_blocks(pools, merger):
    bare = run_bare(merger, pools())
    larv, algo = run_larv(merger, pools(), tiers=[0.0, 1.0], apply="post")
    theta0, merged, base = pools.pretrained_state(), larv.state_dict(), bare.state_dict()
    off = {r["prefix"] for r in algo.record["blocks"] if r["scale"] == 0.0}
    assert len(off) == NUM_LAYERS // 2
    for key in theta0:
        if any(key.startswith(prefix) for prefix in off):
            assert torch.equal(merged[key], theta0[key]), key
        else:  # λ = 1 in the other tier, non_block_scale = 1: untouched
            assert torch.equal(merged[key], base[key]), key


def max_relative_update_gap(model_a, model_b, theta0) -> float:
    sa, sb = model_a.state_dict(), model_b.state_dict()
    gaps = []
    for key, w0 in theta0.items():
        da, db = sa[key] - w0, sb[key] - w0
        gaps.append(float((da - db).norm() / (db.norm() + 1e-12)))
    return max(gaps)


@pytest.mark.parametrize("merger", HOMOGENEOUS)
def test_pre_equals_post_for_homogeneous_mergers(pools64, merger):
    post, algo_post = run_larv(merger, pools64(), apply="post")
    pre, algo_pre = run_larv(merger, pools64(), apply="pre", literal_pre=True)
    shortcut, algo_shortcut = run_larv(merger, pools64(), apply="pre")  # the default: pre runs as post
    assert (algo_pre.record["apply_used"], algo_shortcut.record["apply_used"]) == ("pre", "post")
    assert states_equal(shortcut, post)
    assert next(post.parameters()).dtype == torch.float64
    assert [r["scale"] for r in algo_post.record["blocks"]] == [r["scale"] for r in algo_pre.record["blocks"]]
    assert len(set(r["scale"] for r in algo_post.record["blocks"])) == 3  # the veneer really acts
    assert max_relative_update_gap(pre, post, pools64.pretrained_state()) < 1e-10


def test_the_merger_table_marks_homogeneous_exactly_the_mergers_proven_here():
    """``apply: pre`` takes the ``post`` path only for mergers the test above proves equal."""
    assert sorted(k for k, m in MERGERS.items() if m.homogeneous) == sorted(HOMOGENEOUS)


@pytest.mark.parametrize("merger", ["wudi"])
def test_pre_differs_from_post_for_wudi(pools64, merger):
    post, _ = run_larv(merger, pools64(), apply="post")
    pre, algo = run_larv(merger, pools64())
    assert algo.record["apply_used"] == "pre"
    assert max_relative_update_gap(pre, post, pools64.pretrained_state()) > 1e-3


def test_pre_differs_from_post_for_ties(pools64):
    """TIES trims the top-k% over the whole flattened model: block scaling does not commute."""
    post, _ = run_larv("ties_merging", pools64(), apply="post")
    pre, algo = run_larv("ties_merging", pools64(), apply="pre")
    default, default_algo = run_larv("ties_merging", pools64())
    assert algo.record["apply_used"] == default_algo.record["apply_used"] == "pre"  # no shortcut for TIES
    assert states_equal(default, pre)  # the shipped default is the paper's "before aggregation"
    assert max_relative_update_gap(pre, post, pools64.pretrained_state()) > 1e-2


def test_post_applies_theta0_plus_lambda_delta(pools):
    bare = run_bare("task_arithmetic", pools())
    larv, algo = run_larv("task_arithmetic", pools(), gate="linear_depth", apply="post")
    theta0, merged, base = pools.pretrained_state(), larv.state_dict(), bare.state_dict()
    for key, w0 in theta0.items():
        lam = algo.schedule.scales[key]
        torch.testing.assert_close(merged[key], w0 + lam * (base[key] - w0), rtol=1e-6, atol=1e-7)
    expected = [0.6 + 0.6 * i / (NUM_LAYERS - 1) for i in range(NUM_LAYERS)]
    assert [r["scale"] for r in algo.record["blocks"]] == pytest.approx(expected)


def test_non_block_scale_scales_everything_outside_blocks(pools):
    bare = run_bare("task_arithmetic", pools())
    larv, _ = run_larv("task_arithmetic", pools(), gate="identity", non_block_scale=0.0)
    theta0, merged, base = pools.pretrained_state(), larv.state_dict(), bare.state_dict()
    for key in theta0:
        expected = base[key] if is_block_key(key) else theta0[key]
        assert torch.equal(merged[key], expected), key


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(source="task_vectors"), dict(conflict="pairwise"), dict(gate="continuous"),
     dict(tier_assignment="depth"), dict(tiers=[0.8, 1.2]), dict(apply="pre", source="task_vectors")],
)
def test_record_has_one_complete_row_per_block(pools, kwargs):
    _, algo = run_larv("task_arithmetic", pools(), **kwargs)
    rows = algo.record["blocks"]
    assert [r["index"] for r in rows] == list(range(NUM_LAYERS))
    assert [r["prefix"] for r in rows] == [f"vision_model.encoder.layers.{i}." for i in range(NUM_LAYERS)]
    for r in rows:
        for key in ("e", "c", "z", "s", "scale"):
            assert math.isfinite(r[key]), (key, r)
        assert r["e"] >= 0
    for key in ("gate", "tiers", "source", "apply", "conflict", "eta", "rho", "base_method"):
        assert key in algo.record
    assert algo.record["base_method"]["_target_"] == BASE_MERGERS["task_arithmetic"]["_target_"]
    if algo.gate == "tiered":
        tiers = algo.tiers
        per_tier = [sum(r["tier"] == i for r in rows) for i in range(len(tiers))]
        assert sum(per_tier) == NUM_LAYERS and max(per_tier) - min(per_tier) <= 1
        assert all(r["scale"] == tiers[r["tier"]] for r in rows)


def test_depth_tiers_split_by_depth(pools):
    _, algo = run_larv("task_arithmetic", pools(), tier_assignment="depth")
    assert [r["scale"] for r in algo.record["blocks"]] == [0.6, 0.6, 1.0, 1.0, 1.2, 1.2]


def test_source_changes_the_diagnostics(pools):
    _, merged = run_larv("iso_c", pools(), source="merged")
    _, tasks = run_larv("iso_c", pools(), source="task_vectors")
    e_merged = [r["e"] for r in merged.record["blocks"]]
    e_tasks = [r["e"] for r in tasks.record["blocks"]]
    assert e_merged != pytest.approx(e_tasks)


def test_two_runs_are_bit_identical(pools):
    first, _ = run_larv("iso_cts", pools(), gate="continuous")
    second, _ = run_larv("iso_cts", pools(), gate="continuous")
    assert states_equal(first, second)


def test_callers_in_memory_models_are_not_modified(pools):
    pool = pools()
    before = {name: {k: v.clone() for k, v in pool.load_model(name).state_dict().items()}
              for name in pool.all_model_names}
    run_larv("task_arithmetic", pool, apply="pre")
    for name, state in before.items():
        now = pool.load_model(name).state_dict()
        # FusionBench's task arithmetic itself adds into the in-memory pretrained model; the
        # fine-tuned models must be untouched by LARV's pre-scaling
        if name != "_pretrained_":
            assert all(torch.equal(now[k], v) for k, v in state.items()), name


@pytest.mark.parametrize("merger", ["simple_average", "task_arithmetic", "iso_c", "ties_merging"])
def test_post_leaves_in_memory_inputs_as_the_bare_merger_does(pools, merger):
    """The default path copies no input model. The merger may modify its fine-tuned inputs in
    place exactly as it does without LARV (simple average overwrites its first model), LARV's
    rescaling never reaches them (the merged model is copied first when it aliases an input),
    and the pretrained model, which mergers overwrite with the merged weights, gets θ0 back."""
    bare_pool, larv_pool = pools(), pools()
    run_bare(merger, bare_pool)
    larv, algo = run_larv(merger, larv_pool)
    assert len(set(r["scale"] for r in algo.record["blocks"])) > 1  # the veneer really acts
    for name in bare_pool.all_model_names:
        expected = pools.pretrained if name == "_pretrained_" else bare_pool.load_model(name)
        assert states_equal(expected, larv_pool.load_model(name)), name
        assert not algorithm_module.aliases_any(larv, [larv_pool.load_model(name)]), name


@pytest.mark.parametrize("merger", ["task_arithmetic", "iso_c", "tsvm"])
def test_merging_the_same_in_memory_pool_twice_gives_the_same_model(pools, merger):
    pool = pools()
    first, _ = run_larv(merger, pool)
    second, _ = run_larv(merger, pool)
    assert states_equal(first, second)


def test_aliases_any_detects_shared_storage(pools):
    a = pools.pretrained
    b = copy.deepcopy(a)
    assert algorithm_module.aliases_any(a, [b, a])
    assert not algorithm_module.aliases_any(a, [b])
    assert not algorithm_module.aliases_any(a, [])


# ----------------------------------------------------------------------------- errors
@pytest.fixture
def no_output(monkeypatch):
    """Fail if anything would be written: errors must come before any output."""
    def forbidden(*args, **kwargs):
        raise AssertionError("output written before the error")
    monkeypatch.setattr(algorithm_module, "save_layer_report", forbidden)


def test_pool_without_pretrained_model_raises(pools, no_output):
    pool = BaseModelPool({name: model for name, model in pools.tasks.items()})
    with pytest.raises(ValueError, match="_pretrained_"):
        LARVAlgorithm(base_method=base_config("task_arithmetic")).run(pool)


@pytest.mark.parametrize("apply", ["post", "pre"])
def test_nan_in_a_fine_tuned_model_raises_naming_it(pools, no_output, apply):
    bad = fine_tuned(pools.pretrained, 7)
    with torch.no_grad():
        bad.vision_model.encoder.layers[2].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="task_bad.*NaN"):
        run_larv("task_arithmetic", pools(task_bad=bad), apply=apply)


def test_inf_in_the_pretrained_model_raises(pools, no_output):
    bad = tiny_clip_vision()
    with torch.no_grad():
        bad.vision_model.post_layernorm.weight[0] = float("inf")
    with pytest.raises(ValueError, match="_pretrained_.*NaN or Inf"):
        run_larv("task_arithmetic", pools(_pretrained_=bad))


def test_models_with_different_keys_raise(pools, no_output):
    other = fine_tuned(tiny_clip_vision(num_layers=NUM_LAYERS + 1), 0)
    with pytest.raises(ValueError, match="task_other.*does not match"):
        run_larv("simple_average", pools(task_other=other))


def test_models_with_different_shapes_raise(pools, no_output):
    other = tiny_clip_vision(intermediate_size=48)
    with pytest.raises(ValueError, match="task_other.*shape"):
        run_larv("task_arithmetic", pools(task_other=other))


def test_block_pattern_matching_nothing_raises(pools, no_output):
    with pytest.raises(ValueError, match=r"no_such_blocks"):
        run_larv("task_arithmetic", pools(), block_pattern=r"no_such_blocks\.(\d+)\.")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tiers=[1.0]), "tiers"),
        (dict(tiers=[]), "tiers"),
        (dict(tiers=[-0.1, 1.0]), r"tiers\[0\]"),
        (dict(tiers=[1.0, float("nan")]), r"tiers\[1\]"),
        (dict(tiers=[1.0, float("inf")]), r"tiers\[1\]"),
        (dict(tiers="0.6,1.2"), "tiers"),
        (dict(gate="stepwise"), "gate"),
        (dict(source="merged_model"), "source"),
        (dict(apply="during"), "apply"),
        (dict(conflict="both"), "conflict"),
        (dict(tier_assignment="random"), "tier_assignment"),
        (dict(rho=-1.0), "rho"),
        (dict(eta=float("nan")), "eta"),
        (dict(steepness=0.0), "steepness"),
        (dict(amplitude="big"), "amplitude"),
        (dict(min_scale=1.2, max_scale=0.8), "min_scale"),
        (dict(block_pattern=r"layers\.\d+\."), "capture group"),
        (dict(block_pattern=r"layers\.(\d+"), "block_pattern"),
        (dict(cpu_linalg="mkl"), "cpu_linalg"),
        (dict(diagnostics_precision="lanczos"), "diagnostics_precision"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_key(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LARVAlgorithm(base_method=base_config("task_arithmetic"), **kwargs)


@pytest.mark.parametrize("cpu_linalg", ["numpy", "torch"])
def test_cpu_linalg_gives_the_schedule_of_an_independent_reference(pools, cpu_linalg):
    """Either CPU backend gives the e, c and λ of a loop-and-SVD reference written here."""
    from test_diagnostics import oracle_block_diagnostics

    theta0 = {k: v for k, v in pools.pretrained_state().items() if v.is_floating_point()}
    merged = run_bare("iso_c", pools()).state_dict()
    update = {k: merged[k].detach() - theta0[k] for k in theta0}
    prefixes = [f"vision_model.encoder.layers.{i}." for i in range(NUM_LAYERS)]
    e, c, zero = oracle_block_diagnostics(theta0, [update], prefixes)
    assert not any(zero)
    # z, s and the default 3 tiers, straight from their definitions (docs/method.md)
    mean = sum(c) / NUM_LAYERS
    std = math.sqrt(sum((x - mean) ** 2 for x in c) / NUM_LAYERS)
    z = [(x - mean) / std for x in c]
    s = [e[i] * ((i + 1) / NUM_LAYERS) ** 0.5 / (1 + math.log1p(math.exp(z[i]))) for i in range(NUM_LAYERS)]
    order = sorted(range(NUM_LAYERS), key=lambda i: (s[i], i))
    expected = {block: (0.6, 1.0, 1.2)[rank * 3 // NUM_LAYERS] for rank, block in enumerate(order)}

    _, algo = run_larv("iso_c", pools(), cpu_linalg=cpu_linalg)
    assert algo.record["cpu_linalg"] == cpu_linalg
    for i, got in enumerate(algo.record["blocks"]):
        assert got["e"] == pytest.approx(e[i], rel=1e-9) and got["c"] == pytest.approx(c[i], rel=1e-9)
        assert got["s"] == pytest.approx(s[i], rel=1e-9)
        assert got["scale"] == expected[i]


def test_zero_tier_is_allowed():
    algo = LARVAlgorithm(base_method=base_config("task_arithmetic"), tiers=[0, 1.0, 1.5])
    assert algo.tiers == [0.0, 1.0, 1.5]


def test_base_method_is_required_and_must_have_a_target():
    with pytest.raises(ValueError, match="base_method"):
        LARVAlgorithm()
    with pytest.raises(TypeError, match="base_method"):
        LARVAlgorithm(base_method={"scaling_factor": 0.3})


NAMED_TARGETS = {
    "larv_simple_average": "SimpleAverageAlgorithm", "larv_task_arithmetic": "TaskArithmeticAlgorithm",
    "larv_ties_merging": "TiesMergingAlgorithm", "larv_tsvm": "TaskSingularVectorMerging",
    "larv_iso_c": "ISO_C_Merge", "larv_iso_cts": "ISO_CTS_Merge", "larv_dare_task_arithmetic": "DareTaskArithmetic",
    "larv_wudi": "WUDIMerging", "larv_magmax": "MagMaxAlgorithm",
}


@pytest.mark.parametrize("name", sorted(LARV_METHODS))
def test_named_variants_default_to_their_merger(name):
    """What a user sees: the class's own name, the merger it runs and the record it saves."""
    cls = LARV_METHODS[name]
    assert cls.__module__ == "fusion_bench_larv.algorithm" and cls.__qualname__.startswith("LARV")
    algo = cls()
    record = algo.config_record()
    assert record["base_method"]["_target_"] == f"fusion_bench.method.{NAMED_TARGETS[name]}"
    assert record["base_method"] == BASE_MERGERS[name[len("larv_"):]]
    merger = algo._new_base_merger()
    assert isinstance(merger, import_object(record["base_method"]["_target_"]))
    for key, value in BASE_MERGERS[name[len("larv_"):]].items():
        if key != "_target_" and value is not None:  # TSV-M stores exclude_keys=None as []
            assert getattr(merger, key) == value, key
    algo.base_method["scaling_factor"] = 123.0  # an instance's config is its own copy
    assert cls().base_method == BASE_MERGERS[name[len("larv_"):]]


def test_block_pattern_preset_names_are_accepted(pools):
    _, algo = run_larv("task_arithmetic", pools(), block_pattern="hf_clip")
    assert algo.record["num_blocks"] == NUM_LAYERS
    with pytest.raises(ValueError, match="t5"):
        run_larv("task_arithmetic", pools(), block_pattern="t5")  # valid name, no T5 keys here


def test_readme_python_example_runs(pools):
    """The README's "From Python" block, on tiny in-memory models."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    tasks = list(pools.tasks.values())
    scope = {"pretrained": copy.deepcopy(pools.pretrained), "model_a": copy.deepcopy(tasks[0]),
             "model_b": copy.deepcopy(tasks[1]), "print": lambda *a, **k: None}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["algo"].record["gate"] == "continuous"
    assert len(scope["algo"].record["blocks"]) == NUM_LAYERS
    assert isinstance(scope["merged"], torch.nn.Module)
