"""Diagnostics (fusion_bench_larv.diagnostics) against an independent oracle, by hand, by property.

The oracle below is deliberately naive: full singular values for the effective rank, the explicit
large-side products for the commutator, and Python loops over blocks, matrices, sources and pairs.
"""

import json
import math
import os
from statistics import fmean

import pytest
import threadpoolctl
import torch
import torch.nn.functional as F

from fusion_bench_larv.blocks import find_blocks
from fusion_bench_larv.diagnostics import (
    PRECISIONS,
    BlockDiagnostics,
    block_diagnostics,
    commutator_coefficient,
    effective_rank,
    rank_contrast,
    precision_dtype,
)
from fusion_bench_larv.gates import composite_score, standardize
from fusion_bench_larv.linalg import CPU_LINALG
from fusion_bench_larv.rank_cache import RankCache, process_rank_cache, rank_cache_key, tensor_fingerprint

EPS = 1e-8
REL = 1e-6


# --- oracle ------------------------------------------------------------------------------------


def oracle_effective_rank(a: torch.Tensor) -> float:
    squares = torch.linalg.svdvals(a.double()) ** 2
    if squares.sum() == 0:
        return 0.0
    p = squares / squares.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def oracle_commutator(a: torch.Tensor, d: torch.Tensor, eps: float = EPS) -> float:
    a, d = a.double(), d.double()
    left = torch.linalg.matrix_norm(a @ d.T - d @ a.T)  # the m x m side, formed explicitly
    right = torch.linalg.matrix_norm(a.T @ d - d.T @ a)
    return (0.5 * (left + right) / (a.norm() * d.norm() + eps)).item()


def is_diagnostic(tensor: torch.Tensor) -> bool:
    return tensor.ndim == 2 and tensor.is_floating_point() and min(tensor.shape) > 1


def oracle_block_diagnostics(pretrained, updates, prefixes, conflict="base", conflict_updates=None):
    """Loop-based reference with the rules of the diagnostics module docstring."""
    e_out, c_out, zero_out = [], [], []
    for prefix in prefixes:
        mats = [k for k, v in pretrained.items() if k.startswith(prefix) and is_diagnostic(v)]
        e_sources = []
        for update in updates:
            values = [
                oracle_effective_rank(pretrained[k]) / (oracle_effective_rank(update[k]) + EPS)
                for k in mats
                if update[k].any()
            ]
            if values:
                e_sources.append(fmean(values))
        if not e_sources:
            e_out.append(math.nan), c_out.append(math.nan), zero_out.append(True)
            continue
        c_terms = []
        if conflict == "base":
            for update in updates:
                values = [
                    oracle_commutator(pretrained[k], update[k]) for k in mats if update[k].any()
                ]
                if values:
                    c_terms.append(fmean(values))
        else:
            taus = conflict_updates or updates
            for i in range(len(taus)):
                for j in range(i + 1, len(taus)):
                    values = [oracle_commutator(taus[i][k], taus[j][k]) for k in mats
                              if taus[i][k].any() or taus[j][k].any()]
                    if values:
                        c_terms.append(fmean(values))
        e_out.append(fmean(e_sources))
        c_out.append(fmean(c_terms) if c_terms else 0.0)
        zero_out.append(False)
    return e_out, c_out, zero_out


# --- fixtures ----------------------------------------------------------------------------------

NUM_BLOCKS = 5
SHAPES = {
    "self_attn.q_proj.weight": (6, 6),
    "self_attn.q_proj.bias": (6,),
    "self_attn.k_proj.weight": (6, 6),
    "self_attn.rel_pos": (1, 6),  # 2-D but degenerate: not a diagnostic matrix
    "layer_norm1.weight": (6,),
    "mlp.fc1.weight": (10, 6),
    "mlp.fc1.bias": (10,),
    "mlp.fc2.weight": (6, 10),
}
ZERO_BLOCK = 2  # every update is zero on this block


def randn(*shape, generator, scale=1.0):
    return torch.randn(*shape, generator=generator, dtype=torch.float32) * scale


def block_key(layer, name):
    return f"vision_model.encoder.layers.{layer}.{name}"


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(0)
    pretrained = {
        "vision_model.embeddings.patch_embedding.weight": randn(6, 3, generator=g),
        "vision_model.embeddings.class_embedding": randn(6, generator=g),
        "vision_model.embeddings.position_ids": torch.arange(5).reshape(1, 5),
    }
    for layer in range(NUM_BLOCKS):
        for name, shape in SHAPES.items():
            pretrained[block_key(layer, name)] = randn(*shape, generator=g)
    # a rank-deficient pretrained matrix
    low_rank = randn(6, 2, generator=g) @ randn(2, 6, generator=g)
    pretrained[block_key(0, "self_attn.q_proj.weight")] = low_rank
    pretrained["vision_model.post_layernorm.weight"] = randn(6, generator=g)

    taus = []
    for task in range(3):
        tau = {
            k: randn(*v.shape, generator=g, scale=0.1) if v.is_floating_point() else 0 * v
            for k, v in pretrained.items()
        }
        for name in SHAPES:
            tau[block_key(ZERO_BLOCK, name)].zero_()
            tau[block_key(3, "mlp.fc2.weight")].zero_()  # zero for every source: skipped
        taus.append(tau)
    # task 0 does not touch one matrix of block 1 (pairs with it have c = 0 there)
    taus[0][block_key(1, "self_attn.q_proj.weight")].zero_()
    # task 1 does not touch block 4 at all (left out of block 4's mean over sources)
    for name in SHAPES:
        taus[1][block_key(4, name)].zero_()
    # a rank-1 update
    taus[2][block_key(1, "mlp.fc1.weight")] = randn(10, 1, generator=g) @ randn(1, 6, generator=g)
    merged = {k: sum(t[k] for t in taus) * 0.3 for k in pretrained}
    return pretrained, taus, merged


def prefixes():
    return [f"vision_model.encoder.layers.{i}." for i in range(NUM_BLOCKS)]


def assert_matches_oracle(result: BlockDiagnostics, expected):
    e, c, zero = expected
    assert result.zero_update.tolist() == zero
    assert result.e.dtype == torch.float64 and result.c.dtype == torch.float64
    for got, want in ((result.e.tolist(), e), (result.c.tolist(), c)):
        for g, w in zip(got, want):
            if math.isnan(w):
                assert math.isnan(g)
            else:
                assert g == pytest.approx(w, rel=REL, abs=1e-12)


# --- oracle agreement: matrices ----------------------------------------------------------------


def random_matrices(generator):
    """Several shapes: square, tall, wide, and rank-deficient versions of each."""
    mats = []
    for m, n in ((7, 7), (12, 5), (5, 12), (30, 30), (40, 9), (9, 40)):
        mats.append(torch.randn(m, n, generator=generator, dtype=torch.float64))
        rank = 1 + min(m, n) // 4
        mats.append(torch.randn(m, rank, generator=generator, dtype=torch.float64)
                    @ torch.randn(rank, n, generator=generator, dtype=torch.float64))
    return mats


def test_effective_rank_matches_svd_oracle():
    g = torch.Generator().manual_seed(1)
    for a in random_matrices(g):
        assert effective_rank(a).item() == pytest.approx(oracle_effective_rank(a), rel=REL)
        assert effective_rank(a.float()).dtype == torch.float64


def test_commutator_and_contrast_match_oracle():
    g = torch.Generator().manual_seed(2)
    mats = random_matrices(g)
    for a in mats:
        for d in (torch.randn(a.shape, generator=g, dtype=torch.float64) * 0.1,
                  torch.randn(a.shape[0], 1, generator=g, dtype=torch.float64)
                  @ torch.randn(1, a.shape[1], generator=g, dtype=torch.float64)):
            want = oracle_commutator(a, d)
            assert commutator_coefficient(a, d).item() == pytest.approx(want, rel=REL)
            want = oracle_effective_rank(a) / (oracle_effective_rank(d) + EPS)
            assert rank_contrast(a, d).item() == pytest.approx(want, rel=REL)


@pytest.mark.parametrize("shape", [(3, 4, 10, 6), (5, 6, 10), (2, 8, 8)])
def test_batched_calls_agree_with_per_matrix_calls(shape):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    d = torch.randn(shape, generator=g, dtype=torch.float64)
    ranks, comms, contrasts = effective_rank(a), commutator_coefficient(a, d), rank_contrast(a, d)
    assert ranks.shape == comms.shape == contrasts.shape == shape[:-2]
    flat_a, flat_d = a.reshape(-1, *shape[-2:]), d.reshape(-1, *shape[-2:])
    for i, (ai, di) in enumerate(zip(flat_a, flat_d)):
        assert ranks.reshape(-1)[i].item() == pytest.approx(effective_rank(ai).item(), rel=1e-12)
        want_c, want_e = commutator_coefficient(ai, di).item(), rank_contrast(ai, di).item()
        assert comms.reshape(-1)[i].item() == pytest.approx(want_c, rel=1e-12)
        assert contrasts.reshape(-1)[i].item() == pytest.approx(want_e, rel=1e-12)


# --- oracle agreement: blocks ------------------------------------------------------------------


@pytest.mark.parametrize("cpu_linalg", CPU_LINALG)
@pytest.mark.parametrize(
    "case",
    ["base_merged", "base_task_vectors", "pairwise_task_vectors", "pairwise_merged_source"],
)
def test_block_diagnostics_matches_loop_oracle(model, case, cpu_linalg):
    pretrained, taus, merged = model
    layout = find_blocks(pretrained)
    assert layout.num_blocks == NUM_BLOCKS
    if case == "base_merged":
        kwargs, oracle = dict(updates=[merged]), dict(updates=[merged])
    elif case == "base_task_vectors":
        kwargs, oracle = dict(updates=taus), dict(updates=taus)
    elif case == "pairwise_task_vectors":
        kwargs = dict(updates=taus, conflict="pairwise")
        oracle = dict(updates=taus, conflict="pairwise")
    else:
        kwargs = dict(updates=[merged], conflict="pairwise", conflict_updates=taus)
        oracle = dict(updates=[merged], conflict="pairwise", conflict_updates=taus)
    result = block_diagnostics(pretrained, layout=layout, cpu_linalg=cpu_linalg, **kwargs)
    expected = oracle_block_diagnostics(pretrained, prefixes=prefixes(), **oracle)
    assert_matches_oracle(result, expected)
    assert result.zero_update.tolist() == [i == ZERO_BLOCK for i in range(NUM_BLOCKS)]


def test_pairwise_block_untouched_by_task_vectors_has_zero_conflict(model):
    pretrained, taus, merged = model
    layout = find_blocks(pretrained)
    merged_extra = dict(merged)
    merged_extra[block_key(ZERO_BLOCK, "mlp.fc1.weight")] = torch.ones(10, 6)
    result = block_diagnostics(pretrained, [merged_extra], layout, conflict="pairwise",
                               conflict_updates=taus)
    assert not result.zero_update[ZERO_BLOCK]
    assert result.c[ZERO_BLOCK] == 0.0
    expected = oracle_block_diagnostics(pretrained, [merged_extra], prefixes(), "pairwise", taus)
    assert_matches_oracle(result, expected)


def test_chunking_and_device_do_not_change_results(model):
    pretrained, taus, _ = model
    layout = find_blocks(pretrained)
    reference = block_diagnostics(pretrained, taus, layout)
    chunked = block_diagnostics(pretrained, taus, layout, chunk_bytes=1, device="cpu")
    for got, want in ((chunked.e, reference.e), (chunked.c, reference.c)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, equal_nan=True)


def test_rank_cache_is_filled_reused_and_keyed_by_content(model):
    pretrained, taus, merged = model
    layout = find_blocks(pretrained)
    reference = block_diagnostics(pretrained, [merged], layout)
    cache = {}
    first = block_diagnostics(pretrained, [merged], layout, rank_cache=cache)
    torch.testing.assert_close(first.e, reference.e, equal_nan=True)
    # one entry per pretrained matrix with a non-zero update (block 2 and block 3's fc2 are zero)
    assert len(cache) == 4 * NUM_BLOCKS - 4 - 1
    key = block_key(0, "mlp.fc1.weight")
    assert cache[rank_cache_key(key, pretrained[key])] == pytest.approx(
        oracle_effective_rank(pretrained[key]), rel=REL)
    # the cached values are what the next run uses: doubling them doubles e
    doubled = {k: 2 * v for k, v in cache.items()}
    second = block_diagnostics(pretrained, [merged], layout, rank_cache=doubled)
    torch.testing.assert_close(second.e, 2 * reference.e, rtol=1e-12, atol=0, equal_nan=True)
    torch.testing.assert_close(second.c, reference.c, equal_nan=True)
    # a changed pretrained matrix misses the cache
    changed = dict(pretrained)
    changed[key] = pretrained[key] + 1
    assert rank_cache_key(key, changed[key]) not in cache
    block_diagnostics(changed, [merged], layout, rank_cache=cache)
    assert len(cache) == 4 * NUM_BLOCKS - 4


def test_tensor_fingerprint():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(5, 7, generator=g)
    assert tensor_fingerprint(a) == tensor_fingerprint(a.clone())
    b = a.clone()
    b[3, 2] += 1e-6
    assert tensor_fingerprint(b) != tensor_fingerprint(a)
    assert tensor_fingerprint(a.double()) != tensor_fingerprint(a)
    assert tensor_fingerprint(a.reshape(7, 5)) != tensor_fingerprint(a)
    assert tensor_fingerprint(a.T) == tensor_fingerprint(a.T.contiguous())
    assert isinstance(tensor_fingerprint(a.bfloat16()), str)


# --- hand-computed cases -----------------------------------------------------------------------


def test_effective_rank_by_hand():
    for n in (1, 2, 5, 16):
        assert effective_rank(torch.eye(n)).item() == pytest.approx(n, rel=1e-12)
    assert effective_rank(torch.eye(4, 7)).item() == pytest.approx(4, rel=1e-12)
    rank_one = torch.arange(1.0, 7.0)[:, None] * torch.arange(1.0, 5.0)[None, :]
    assert effective_rank(rank_one).item() == pytest.approx(1, rel=1e-12)
    p = torch.tensor([9 / 25, 16 / 25], dtype=torch.float64)
    assert effective_rank(torch.diag(torch.tensor([3.0, 4.0]))).item() == pytest.approx(
        math.exp(-(p * p.log()).sum().item()), rel=1e-12)
    assert effective_rank(torch.zeros(4, 3)).item() == 0.0  # documented convention


def test_commutator_by_hand():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(6, 6, generator=g, dtype=torch.float64)
    sym = s + s.T
    # commuting symmetric matrices (a polynomial of each other) and diagonal matrices: c = 0
    assert commutator_coefficient(sym, sym @ sym + 2 * sym).item() == pytest.approx(0, abs=1e-7)
    diagonal = torch.diag(torch.arange(1.0, 5.0)), torch.diag(torch.tensor([2.0, -1.0, 0.5, 3.0]))
    assert commutator_coefficient(*diagonal).item() == pytest.approx(0, abs=1e-12)
    a = torch.randn(8, 5, generator=g, dtype=torch.float64)
    assert commutator_coefficient(a, a).item() == pytest.approx(0, abs=1e-7)
    assert commutator_coefficient(a, torch.zeros_like(a)).item() == 0.0
    # a 90-degree rotation against the identity: both terms 2*sqrt(2), norms sqrt(2)*sqrt(2)
    rotation = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    c = commutator_coefficient(rotation, torch.eye(2), eps=0).item()
    assert c == pytest.approx(math.sqrt(2), rel=1e-12)


def test_commutator_is_symmetric_and_scale_invariant():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(9, 4, generator=g, dtype=torch.float64)
    d = torch.randn(9, 4, generator=g, dtype=torch.float64)
    c = commutator_coefficient(a, d).item()
    assert commutator_coefficient(d, a).item() == pytest.approx(c, rel=1e-12)
    assert commutator_coefficient(3 * a, 0.5 * d).item() == pytest.approx(c, rel=1e-9)
    assert commutator_coefficient(a.T, d.T).item() == pytest.approx(c, rel=1e-12)


# --- properties --------------------------------------------------------------------------------


def test_effective_rank_bounds_and_nonnegative_contrast():
    g = torch.Generator().manual_seed(7)
    for a in random_matrices(g):
        r = effective_rank(a).item()
        assert 1 - 1e-12 <= r <= min(a.shape) * (1 + 1e-12)
        assert rank_contrast(a, torch.randn(a.shape, generator=g, dtype=torch.float64)).item() >= 0


def test_standardize_properties():
    c = torch.tensor([0.1, 0.4, math.nan, 0.2, 0.9])
    z = standardize(c)
    valid = z[~torch.isnan(z)]
    assert math.isnan(z[2]) and valid.numel() == 4
    assert valid.mean().item() == pytest.approx(0, abs=1e-12)
    assert valid.std(correction=0).item() == pytest.approx(1, rel=1e-12)
    assert standardize(torch.full((5,), 0.3)).tolist() == [0.0] * 5
    masked = standardize(torch.tensor([1.0, 2.0, 3.0]), valid=torch.tensor([True, False, True]))
    assert masked[0] == -1.0 and math.isnan(masked[1]) and masked[2] == 1.0
    assert torch.isnan(standardize(torch.full((3,), math.nan))).all()


def test_composite_score_by_hand_and_properties():
    e = torch.tensor([2.0, 2.0, 2.0, 2.0])
    z = torch.zeros(4)
    s = composite_score(e, z)
    assert s[1].item() == pytest.approx(2 * math.sqrt(2 / 4) / (1 + math.log(2)), rel=1e-12)
    assert bool((s.diff() > 0).all())  # depth prior
    flat = composite_score(e, z, rho=0.0)
    assert torch.allclose(flat, torch.full((4,), 2 / (1 + math.log(2)), dtype=torch.float64))
    no_prior = composite_score(e, z, eta=0.0, rho=0.0)
    assert no_prior.tolist() == pytest.approx([1 / (1 + math.log(2))] * 4)
    # higher conflict lowers the score
    conflicted = composite_score(e, torch.tensor([0.0, 1.0, -1.0, 0.0]), rho=0.0)
    assert conflicted[1] < conflicted[0] < conflicted[2]
    softplus_one = F.softplus(torch.tensor(1.0, dtype=torch.float64)).item()
    assert conflicted[1].item() == pytest.approx(2 / (1 + softplus_one), rel=1e-12)


def test_composite_score_invalid_blocks_count_in_depth():
    e = torch.tensor([math.nan, 1.0, 1.0, 1.0])
    z = torch.tensor([math.nan, 0.0, 0.0, 0.0])
    s = composite_score(e, z)
    assert math.isnan(s[0])
    assert s[3].item() == pytest.approx(1 / (1 + math.log(2)), rel=1e-12)  # (3 + 1) / L with L = 4
    s = composite_score(torch.ones(3), torch.zeros(3), valid=torch.tensor([True, False, True]))
    assert math.isnan(s[1]) and not math.isnan(s[2])


def test_end_to_end_score_pipeline_on_zero_update_block(model):
    pretrained, taus, merged = model
    diag = block_diagnostics(pretrained, [merged], find_blocks(pretrained))
    z = standardize(diag.c, valid=~diag.zero_update)
    s = composite_score(diag.e, z, valid=~diag.zero_update)
    assert torch.isnan(s).tolist() == diag.zero_update.tolist()
    assert bool((s[~diag.zero_update] > 0).all())


# --- float32 -----------------------------------------------------------------------------------


def test_float32_effective_rank_error_measurement():
    """float32 is accepted but not the default: measured error against float64.

    Full-rank matrices stay within 1e-6 relative; rank-deficient ones do not (round-off
    eigenvalues of size ~1e-7 * sigma_max^2 enter the entropy), which is why float64 stays the
    reference precision (``diagnostics_precision: exact``) and float32 is only offered as the explicit
    ``diagnostics_precision: approximate``.
    """
    g = torch.Generator().manual_seed(8)
    full_rank_errors, low_rank_errors = [], []
    for m, n in ((256, 256), (384, 128), (128, 384)):
        a = torch.randn(m, n, generator=g, dtype=torch.float64)
        low = (torch.randn(m, 4, generator=g, dtype=torch.float64)
               @ torch.randn(4, n, generator=g, dtype=torch.float64))
        for errors, x in ((full_rank_errors, a), (low_rank_errors, low)):
            r64 = effective_rank(x).item()
            r32 = effective_rank(x.float(), dtype=torch.float32).item()
            errors.append(abs(r32 - r64) / r64)
    assert max(full_rank_errors) <= 1e-6
    assert max(low_rank_errors) <= 1e-3


# --- argument validation -----------------------------------------------------------------------


def test_block_diagnostics_validates_arguments(model):
    pretrained, taus, merged = model
    layout = find_blocks(pretrained)
    with pytest.raises(ValueError, match="conflict"):
        block_diagnostics(pretrained, [merged], layout, conflict="pairs")
    with pytest.raises(ValueError, match="conflict_updates"):
        block_diagnostics(pretrained, [merged], layout, conflict="pairwise")
    with pytest.raises(ValueError, match="updates"):
        block_diagnostics(pretrained, [], layout)
    with pytest.raises(ValueError, match="eps"):
        block_diagnostics(pretrained, [merged], layout, eps=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        block_diagnostics(pretrained, [merged], layout, dtype=torch.int64)
    missing = {k: v for k, v in merged.items() if k != block_key(0, "mlp.fc1.weight")}
    with pytest.raises(KeyError, match="mlp.fc1.weight"):
        block_diagnostics(pretrained, [missing], layout)
    wrong = dict(merged)
    wrong[block_key(0, "mlp.fc1.weight")] = torch.ones(6, 10)
    with pytest.raises(ValueError, match="shape"):
        block_diagnostics(pretrained, [wrong], layout)
    norms_only = find_blocks(pretrained, r"vision_model\.encoder\.layers\.(\d+)\.layer_norm1")
    with pytest.raises(ValueError, match="no diagnostic matrix"):
        block_diagnostics(pretrained, [merged], norms_only)


def test_matrix_functions_validate_arguments():
    with pytest.raises(ValueError, match="a must have shape"):
        effective_rank(torch.ones(3))
    with pytest.raises(ValueError, match="same matrix shape"):
        commutator_coefficient(torch.ones(3, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="eta"):
        composite_score(torch.ones(2), torch.zeros(2), eta=math.nan)
    with pytest.raises(ValueError, match="valid"):
        standardize(torch.ones(3), valid=torch.ones(2, dtype=torch.bool))


# --- performance options (issue 6): threaded eigen-solves, rank caches, approximate mode -------


@pytest.mark.parametrize("cpu_linalg", CPU_LINALG)
def test_threaded_cpu_eigen_solves_give_identical_results(model, cpu_linalg):
    pretrained, taus, merged = model
    layout = find_blocks(pretrained)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = block_diagnostics(pretrained, taus, layout, cpu_linalg=cpu_linalg)
        torch.set_num_threads(3)  # split each batch over 3 OS threads, one BLAS thread each
        threaded = block_diagnostics(pretrained, taus, layout, chunk_bytes=10**6, cpu_linalg=cpu_linalg)
        assert torch.get_num_threads() == 3  # the workers' setting does not leak
    finally:
        torch.set_num_threads(threads)
    for got, want in ((threaded.e, serial.e), (threaded.c, serial.c)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, equal_nan=True)


def test_disk_rank_cache_persists_across_instances(model, tmp_path):
    pretrained, taus, merged = model
    layout = find_blocks(pretrained)
    reference = block_diagnostics(pretrained, [merged], layout)
    first = RankCache(tmp_path / "ranks")
    result = block_diagnostics(pretrained, [merged], layout, rank_cache=first)
    torch.testing.assert_close(result.e, reference.e, rtol=1e-12, atol=0, equal_nan=True)
    files = sorted(p.name for p in (tmp_path / "ranks").iterdir())
    assert len(files) == len(first) == 4 * NUM_BLOCKS - 4 - 1
    assert all(f.endswith(".json") and not f.startswith(".") for f in files)
    # a new process (here: a new instance) reads the files instead of recomputing
    second = RankCache(tmp_path / "ranks")
    assert len(second) == 0
    key = rank_cache_key(block_key(0, "mlp.fc1.weight"), pretrained[block_key(0, "mlp.fc1.weight")])
    assert key in second and second[key] == first[key]
    for cache_key in list(first):
        assert first[cache_key] >= 1 / 0.9
        first[cache_key] = 0.9 * first[cache_key]  # written through to disk (a valid entry)
    scaled = block_diagnostics(pretrained, [merged], layout, rank_cache=RankCache(tmp_path / "ranks"))
    torch.testing.assert_close(scaled.e, 0.9 * reference.e, rtol=1e-12, atol=0, equal_nan=True)
    # clear() forgets memory only; a corrupt file or a file holding another key is a miss
    second.clear()
    assert len(second) == 0 and key in second
    path = second._path(key)
    with open(path, "w") as f:
        f.write("{not json")
    assert key not in RankCache(tmp_path / "ranks")
    other = rank_cache_key("other", torch.ones(2, 2))
    with open(path, "w") as f:
        json.dump({"key": RankCache._key_record(other), "r_eff": 1.0}, f)
    assert key not in RankCache(tmp_path / "ranks")
    del first[key]
    assert not os.path.exists(path)


def test_process_rank_cache_is_shared(tmp_path):
    assert process_rank_cache() is process_rank_cache()
    assert process_rank_cache(tmp_path) is process_rank_cache(str(tmp_path))
    assert process_rank_cache(tmp_path) is not process_rank_cache()


def test_precision_dtype():
    assert PRECISIONS == ("exact", "approximate")
    assert precision_dtype("exact") == torch.float64
    assert precision_dtype("approximate") == torch.float32
    with pytest.raises(ValueError, match="diagnostics_precision"):
        precision_dtype("randomized")


def test_approximate_mode_error_against_exact(model):
    """The approximate mode (float32) stays within 1% of the exact r_eff and c, on full-rank,
    low-rank-plus-noise and exactly low-rank matrices (ViT-B/32 shapes are measured by
    ``scripts/bench_overhead.py --error``: docs/performance.md)."""
    g = torch.Generator().manual_seed(9)
    cases = []
    for m, n in ((256, 256), (1024, 256)):
        w0 = torch.randn(m, n, generator=g) * 0.02
        low = torch.randn(m, 8, generator=g) @ torch.randn(8, n, generator=g)
        noise = torch.randn(m, n, generator=g)
        cases += [(w0, 1e-3 * low / low.norm()), (w0, 1e-3 * (low / low.norm() + 0.3 * noise / noise.norm()))]
    for w0, d in cases:
        exact = effective_rank(d).item()
        approx = effective_rank(d, dtype=torch.float32).item()
        assert abs(approx - exact) / exact <= 1e-2
        assert abs(effective_rank(w0, dtype=torch.float32).item() - effective_rank(w0).item()) \
            <= 1e-6 * effective_rank(w0).item()
    pretrained, taus, merged = model
    layout = find_blocks(pretrained)
    exact = block_diagnostics(pretrained, [merged], layout)
    approx = block_diagnostics(pretrained, [merged], layout, dtype=torch.float32)
    torch.testing.assert_close(approx.e, exact.e, rtol=1e-2, atol=0, equal_nan=True)
    torch.testing.assert_close(approx.c, exact.c, rtol=1e-2, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("conflict", ["base", "pairwise"])
def test_numpy_and_torch_cpu_linalg_agree(model, dtype, conflict):
    """The two CPU backends run the same arithmetic: equal to round-off (float64: 1e-12)."""
    pretrained, taus, _ = model
    layout = find_blocks(pretrained)
    blas_before = [(i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
    threads = torch.get_num_threads()
    results = {be: block_diagnostics(pretrained, taus, layout, conflict=conflict, dtype=dtype, cpu_linalg=be)
               for be in CPU_LINALG}
    assert torch.get_num_threads() == threads  # restored after the numpy path
    assert [(i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info()] == blas_before
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for q in ("e", "c"):
        torch.testing.assert_close(getattr(results["numpy"], q), getattr(results["torch"], q), rtol=tol, atol=0,
                                   equal_nan=True)


def test_cpu_linalg_is_validated(model):
    pretrained, taus, _ = model
    with pytest.raises(ValueError, match="cpu_linalg.*'mkl'"):
        block_diagnostics(pretrained, taus, find_blocks(pretrained), cpu_linalg="mkl")
