"""The ``lines`` gate against an independent implementation of LiNeS's published rule.

LiNeS (Wang et al., ICLR 2025) for multi-task merging: the merger's update at scale 1,
``tau_merged``, becomes ``lambda_l * tau_merged`` in block ``l`` with
``lambda_l = alpha + beta * l / (L - 1)``, ``alpha = ||sum_t tau_t||_1 / (T ||tau_merged||_1)``, and
every parameter outside the blocks gets ``alpha``. The reference below is written from that
rule alone: its own block regex, its own sums, no LARV code.
"""

import re

import pytest
import torch
from fusion_bench.utils import instantiate

from fusion_bench_larv.algorithm import LARVAlgorithm
from fusion_bench_larv.defaults import BASE_MERGERS, MERGERS
from fusion_bench_larv.gate_table import GATES
from fusion_bench_larv.gates import lines_alpha
from tiny_models import NUM_LAYERS, TinyPool

BLOCK = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")


def lines_reference(theta0, finetuned, merged_at_scale_1, beta):
    """θ0 + λ ⊙ τ_merged by LiNeS's rule (float64), from plain state dicts."""
    keys = [k for k, v in theta0.items() if v.is_floating_point()]
    task_sum_l1 = sum(float(sum(ft[k].double() - theta0[k].double() for ft in finetuned).abs().sum()) for k in keys)
    merged_l1 = sum(float((merged_at_scale_1[k].double() - theta0[k].double()).abs().sum()) for k in keys)
    alpha = task_sum_l1 / (len(finetuned) * merged_l1)
    depth = {k: int(BLOCK.match(k).group(1)) for k in keys if BLOCK.match(k)}
    num_blocks = max(depth.values()) + 1
    out = {}
    for k in keys:
        lam = alpha + beta * depth[k] / (num_blocks - 1) if k in depth else alpha
        out[k] = theta0[k].double() + lam * (merged_at_scale_1[k].double() - theta0[k].double())
    return out, alpha


@pytest.fixture(scope="module")
def pool():
    return TinyPool(num_tasks=3)


def run_lines(merger, pool, **kwargs):
    torch.manual_seed(0)
    algo = LARVAlgorithm(base_method={**BASE_MERGERS[merger], **({"iter_num": 5} if merger == "wudi" else {})},
                         gate="lines", **kwargs)
    return algo.run(pool()), algo


def bare_at_scale_1(merger, pool):
    config = dict(BASE_MERGERS[merger])
    if MERGERS[merger].scale_key:
        config[MERGERS[merger].scale_key] = 1.0
    torch.manual_seed(0)
    return instantiate(config, _recursive_=False).run(pool())


@pytest.mark.parametrize("merger,beta", [("task_arithmetic", 1.0), ("task_arithmetic", 0.3), ("ties_merging", 1.5),
                                         ("iso_c", 0.5), ("simple_average", 1.0)])
def test_lines_matches_the_published_rule(pool, merger, beta):
    merged, algo = run_lines(merger, pool, lines_beta=beta)
    theta0 = pool.pretrained_state()
    finetuned = [m.state_dict() for m in pool.tasks.values()]
    expected, alpha = lines_reference(theta0, finetuned, bare_at_scale_1(merger, pool).state_dict(), beta)
    got = merged.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), value, rtol=1e-5, atol=1e-6)
    assert algo.record["gate_settings"] == {"lines_alpha": pytest.approx(alpha, rel=1e-9), "lines_beta": beta}
    assert algo.record["apply_used"] == "post"  # LiNeS rescales the merged update, for TIES too
    if merger == "task_arithmetic":
        assert alpha == pytest.approx(1 / 3, rel=1e-6)  # 1/T
    if merger == "simple_average":
        assert alpha == pytest.approx(1.0, rel=1e-6)


def test_lines_replaces_the_global_scaling_factor_of_every_merger_that_has_one(pool):
    for key, merger in MERGERS.items():
        _, algo = run_lines(key, pool, lines_beta=0.5)
        used = algo.record["base_method_used"]
        if merger.scale_key is None:
            assert used == algo.record["base_method"], key
        else:
            assert used[merger.scale_key] == 1.0, key
            assert {k: v for k, v in used.items() if k != merger.scale_key} == \
                {k: v for k, v in algo.record["base_method"].items() if k != merger.scale_key}, key
        scales = [r["scale"] for r in algo.record["blocks"]]
        alpha = algo.record["gate_settings"]["lines_alpha"]
        assert scales == pytest.approx([alpha + 0.5 * i / (NUM_LAYERS - 1) for i in range(NUM_LAYERS)]), key


def test_a_given_alpha_is_used_as_is_and_non_block_parameters_get_it(pool):
    merged, algo = run_lines("task_arithmetic", pool, lines_alpha=0.2, lines_beta=0.0)
    theta0 = pool.pretrained_state()
    base = bare_at_scale_1("task_arithmetic", pool).state_dict()
    for key, w0 in theta0.items():
        torch.testing.assert_close(merged.state_dict()[key], w0 + 0.2 * (base[key] - w0), rtol=1e-5, atol=1e-7)
    assert algo.record["gate_settings"] == {"lines_alpha": 0.2, "lines_beta": 0.0}


def test_the_pool_is_left_as_it_was(pool):
    models = pool()
    before = {name: {k: v.clone() for k, v in models.load_model(name).state_dict().items()}
              for name in models.all_model_names}
    LARVAlgorithm(base_method=BASE_MERGERS["simple_average"], gate="lines", lines_beta=1.0).run(models)
    for name, state in before.items():
        after = models.load_model(name).state_dict()
        assert all(torch.equal(after[k], v) for k, v in state.items()), name


def test_lines_settings_are_checked_before_anything_runs():
    with pytest.raises(ValueError, match="gate 'lines' needs lines_beta"):
        LARVAlgorithm(base_method=BASE_MERGERS["task_arithmetic"], gate="lines")
    with pytest.raises(ValueError, match="lines_alpha -0.1 < 0"):
        LARVAlgorithm(base_method=BASE_MERGERS["task_arithmetic"], gate="lines", lines_alpha=-0.1, lines_beta=1.0)
    with pytest.raises(ValueError, match="linear_depth ramp takes a number"):
        LARVAlgorithm(base_method=BASE_MERGERS["task_arithmetic"], gate="linear_depth", lines_alpha="auto")
    with pytest.raises(ValueError, match="lines_alpha must be null, 'auto' or a number"):
        LARVAlgorithm(base_method=BASE_MERGERS["task_arithmetic"], gate="lines", lines_alpha="max", lines_beta=1.0)
    with pytest.raises(ValueError, match="merged update is zero"):
        lines_alpha(1.0, 0.0, 3)


def test_the_linear_ramp_keeps_its_own_defaults():
    gate = GATES["linear_depth"]
    assert gate.settings({"lines_alpha": None, "lines_beta": None}) == {"lines_alpha": 0.6, "lines_beta": 0.6}
    assert not gate.unit_scale and not gate.post_only and gate.non_block_key is None
    assert GATES["lines"].settings({"lines_alpha": None, "lines_beta": 1.0}) == {"lines_alpha": "auto", "lines_beta": 1.0}


@pytest.mark.slow
def test_lines_on_the_shipped_8_task_suite_matches_the_reference(tmp_path):
    """Task arithmetic at scale 1, ``gate=lines lines_alpha=auto lines_beta=1.0`` on the real
    ``tinyclip_synth8`` (shipped seed-0 towers): the same weights as the reference, α = 1/8."""
    from fusion_bench import BaseModelPool
    from transformers import CLIPVisionModel

    from fusion_bench_larv.synth.build import build
    from fusion_bench_larv.synth.tasks import SUITES

    tasks = list(SUITES[8])
    assets = build(tasks, cache_dir=tmp_path / "cache")
    paths = {"_pretrained_": assets.pretrained, **{t: assets.finetuned(t) for t in tasks}}
    load = lambda: BaseModelPool({k: CLIPVisionModel.from_pretrained(str(p)) for k, p in paths.items()})
    merged = LARVAlgorithm(base_method=BASE_MERGERS["task_arithmetic"], gate="lines", lines_alpha="auto",
                           lines_beta=1.0).run(load())
    models = load()
    theta0 = models.load_model("_pretrained_").state_dict()
    finetuned = [models.load_model(t).state_dict() for t in tasks]
    ta_sum = {k: theta0[k] + sum(ft[k] - theta0[k] for ft in finetuned) for k in theta0 if theta0[k].is_floating_point()}
    expected, alpha = lines_reference(theta0, finetuned, ta_sum, 1.0)
    assert alpha == pytest.approx(1 / 8, rel=1e-6)
    for key, value in expected.items():
        torch.testing.assert_close(merged.state_dict()[key].double(), value, rtol=1e-5, atol=1e-6)
