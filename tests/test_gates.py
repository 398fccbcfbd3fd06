"""Gates: block scores -> block scales (fusion_bench_larv.gates)."""

import math

import pytest
import torch

from fusion_bench_larv.gates import (
    continuous_scales,
    identity_scales,
    linear_depth_scales,
    tiered_scales,
)

NAN = float("nan")


# --- tiered ------------------------------------------------------------------------------------


def test_tiered_12_blocks_3_tiers_four_lowest_get_first_tier():
    scores = torch.tensor([5.0, 0.1, 9.0, 0.3, 7.0, 0.2, 6.0, 0.4, 8.0, 1.0, 10.0, 11.0])
    scales, tier = tiered_scales(scores, [0.6, 1.0, 1.2])
    assert scales.dtype == torch.float64 and tier.dtype == torch.long
    # ascending: 1,5,3,7 (tier 0) | 9,0,6,4 (tier 1) | 8,2,10,11 (tier 2)
    assert tier.tolist() == [1, 0, 2, 0, 1, 0, 1, 0, 2, 1, 2, 2]
    assert scales.tolist() == [1.0, 0.6, 1.2, 0.6, 1.0, 0.6, 1.0, 0.6, 1.2, 1.0, 1.2, 1.2]


def test_tiered_24_blocks_2_tiers():
    scores = torch.arange(24, 0, -1, dtype=torch.float64)  # deepest blocks score lowest
    scales, tier = tiered_scales(scores, [0.8, 1.2])
    assert tier.tolist() == [1] * 12 + [0] * 12
    assert scales.tolist() == [1.2] * 12 + [0.8] * 12


def test_tiered_uneven_split_follows_floor_rule():
    scales, tier = tiered_scales(torch.arange(10.0), [0.0, 1.0, 2.0])
    assert tier.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # floor(r * 3 / 10)
    assert scales[0] == 0.0  # a zero tier is allowed


def test_tiered_ties_shallower_first():
    scales, tier = tiered_scales(torch.ones(6), [0.6, 1.0, 1.2])
    assert tier.tolist() == [0, 0, 1, 1, 2, 2]
    scores = torch.tensor([2.0, 1.0, 1.0, 2.0])
    assert tiered_scales(scores, [0.8, 1.2])[1].tolist() == [1, 0, 0, 1]
    assert tiered_scales(torch.tensor([1.0, 1.0, 0.0, 1.0]), [0.8, 1.2])[1].tolist() == [0, 1, 0, 1]


def test_tiered_zero_update_blocks_get_one_and_no_tier():
    scores = torch.arange(13, dtype=torch.float64)
    scores[6] = NAN
    scales, tier = tiered_scales(scores, [0.6, 1.0, 1.2])
    assert scales[6] == 1.0 and tier[6] == -1
    valid_tiers = tier[torch.arange(13) != 6]
    assert valid_tiers.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]  # 12 ranked blocks


def test_tiered_explicit_valid_mask_and_all_invalid():
    scores = torch.tensor([3.0, 2.0, 1.0, 0.0])
    valid = torch.tensor([True, False, True, True])
    scales, tier = tiered_scales(scores, [0.8, 1.2], valid=valid)
    assert tier.tolist() == [1, -1, 0, 0] and scales.tolist() == [1.2, 1.0, 0.8, 0.8]
    scales, tier = tiered_scales(torch.full((3,), NAN), [0.8, 1.2])
    assert scales.tolist() == [1.0] * 3 and tier.tolist() == [-1] * 3


def test_tiered_depth_assignment_ignores_scores():
    scores = torch.arange(12, 0, -1, dtype=torch.float64)
    scores[0] = NAN  # block 0 is a zero-update block
    scales, tier = tiered_scales(scores, [0.6, 1.0, 1.2], assignment="depth")
    # 11 valid blocks 1..11, ranked by depth: floor(r * 3 / 11)
    assert tier.tolist() == [-1, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert scales[0] == 1.0


@pytest.mark.parametrize(
    "tiers, match",
    [([1.0], "at least 2"), ([], "at least 2"), ([0.5, -0.1], ">= 0"), ([0.5, NAN], "finite"),
     ([0.5, math.inf], "finite")],
)
def test_tiered_rejects_bad_tiers(tiers, match):
    with pytest.raises(ValueError, match=f"tiers.*{match}"):
        tiered_scales(torch.arange(4.0), tiers)


def test_tiered_rejects_bad_arguments():
    with pytest.raises(TypeError, match="tiers"):
        tiered_scales(torch.arange(4.0), "0.8,1.2")
    with pytest.raises(ValueError, match="assignment.*'rank'"):
        tiered_scales(torch.arange(4.0), [0.8, 1.2], assignment="rank")
    with pytest.raises(ValueError, match="finite"):
        tiered_scales(torch.tensor([1.0, NAN]), [0.8, 1.2], valid=torch.tensor([True, True]))
    with pytest.raises(ValueError, match="valid"):
        tiered_scales(torch.arange(4.0), [0.8, 1.2], valid=torch.ones(3, dtype=torch.bool))


# --- continuous --------------------------------------------------------------------------------


def test_continuous_median_block_gets_one_and_bounds():
    scores = torch.tensor([0.01, 0.5, 1.0, 2.0, 3.0])  # median 1.0
    scales = continuous_scales(scores)
    assert scales.dtype == torch.float64
    assert scales[2] == 1.0
    assert bool((scales > 0.5).all() and (scales < 1.5).all())
    # tanh saturates in floating point: extreme scores reach the bounds, never pass them
    extreme = continuous_scales(torch.tensor([0.0, 1.0, 1e6]))
    assert extreme[0] >= 0.5 and extreme[2] <= 1.5
    assert bool((scales.diff() > 0).all())  # monotone in the score
    assert scales[1].item() == pytest.approx(1 + 0.5 * math.tanh(3 * (0.5 - 1)))


def test_continuous_even_count_median_averages_middle_values():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])  # median 2.5
    expected = [1 + 0.5 * math.tanh(3 * (s / 2.5 - 1)) for s in (1.0, 2.0, 3.0, 4.0)]
    assert continuous_scales(scores).tolist() == pytest.approx(expected, rel=1e-12)


def test_continuous_amplitude_steepness_clamp_and_invalid():
    scores = torch.tensor([0.1, 1.0, NAN, 10.0])
    scales = continuous_scales(scores, amplitude=1.0, steepness=10.0, min_scale=0.2, max_scale=1.8)
    assert scales[2] == 1.0  # invalid block
    assert scales[0] == pytest.approx(0.2) and scales[3] == pytest.approx(1.8)
    assert scales[1] == 1.0


def test_continuous_rejects_bad_arguments():
    with pytest.raises(ValueError, match="median"):
        continuous_scales(torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="min_scale"):
        continuous_scales(torch.ones(3), min_scale=1.5, max_scale=0.5)
    with pytest.raises(ValueError, match="amplitude"):
        continuous_scales(torch.ones(3), amplitude=NAN)
    with pytest.raises(ValueError, match="steepness"):
        continuous_scales(torch.ones(3), steepness=math.inf)


def test_continuous_all_invalid_is_identity():
    assert continuous_scales(torch.full((4,), NAN)).tolist() == [1.0] * 4


# --- linear depth and identity -----------------------------------------------------------------


def test_linear_depth_endpoints():
    scales = linear_depth_scales(12)
    assert scales.dtype == torch.float64 and scales.shape == (12,)
    assert scales[0].item() == pytest.approx(0.6) and scales[-1].item() == pytest.approx(1.2)
    assert scales.diff().tolist() == pytest.approx([0.6 / 11] * 11)
    assert linear_depth_scales(2, alpha=0.5, beta=1.0).tolist() == [0.5, 1.5]
    assert linear_depth_scales(1, alpha=0.7).tolist() == [0.7]


def test_identity_and_num_blocks_validation():
    assert identity_scales(5).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="num_blocks"):
        identity_scales(0)
    with pytest.raises(TypeError, match="num_blocks"):
        linear_depth_scales(12.0)
    with pytest.raises(TypeError, match="num_blocks"):
        linear_depth_scales(True)
    with pytest.raises(ValueError, match="alpha"):
        linear_depth_scales(3, alpha=NAN)


def test_the_ramp_refuses_an_unresolved_auto_alpha():
    """``lines_alpha: auto`` is resolved from the models (gates.lines_alpha) before the rule runs;
    a rule handed the word itself refuses instead of ramping from a string."""
    from fusion_bench_larv.gate_table import GATES

    scores = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="lines_alpha 'auto' must be resolved"):
        GATES["lines"].scales(scores, torch.ones(4, dtype=torch.bool), {"lines_alpha": "auto", "lines_beta": 1.0})
    lam, tier = GATES["lines"].scales(scores, torch.ones(4, dtype=torch.bool), {"lines_alpha": 0.25, "lines_beta": 0.75})
    assert lam.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0]) and tier is None


@pytest.mark.parametrize("value, expected", [(1, True), ("2.5", True), (float("nan"), False), (None, False),
                                             ("", False), ("abc", False), ([1], False)])
def test_plots_draw_only_finite_numbers(value, expected):
    from fusion_bench_larv.plots import finite

    assert finite(value) is expected
