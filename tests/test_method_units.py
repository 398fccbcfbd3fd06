"""Small units of the method's helper modules: the CPU backend, the batched kernel, gate and
schedule edge cases, the checked pool's merger lookup, the lazy update mapping."""

import math

import pytest
import torch
from omegaconf import ListConfig

from fusion_bench.method import ISO_C_Merge, TaskArithmeticAlgorithm
from fusion_bench_larv.batching import KeyMatrices, RankQueue
from fusion_bench_larv.blocks import find_blocks
from fusion_bench_larv.diagnostics import BlockDiagnostics, block_diagnostics, effective_rank
from fusion_bench_larv.gate_table import GATES
from fusion_bench_larv.gates import composite_score, standardize, tiered_scales
from fusion_bench_larv.linalg import CPU_LINALG, Linalg, cpu_backend
from fusion_bench_larv.schedule import build_schedule
from fusion_bench_larv.settings import block_pattern_value
from fusion_bench_larv.state_dicts import Delta
from fusion_bench_larv.watched_pool import svd_merger

GATE_KWARGS = dict(gate=GATES["tiered"], settings=dict(tiers=[0.6, 1.0, 1.2], tier_assignment="score"))


def test_the_backend_is_chosen_once_by_name():
    for name in CPU_LINALG:
        backend = cpu_backend(name)
        assert isinstance(backend, Linalg) and backend.name == name and repr(backend) == f"Linalg({name!r})"
        assert cpu_backend(backend) is backend  # an object passes through
    for bad in ("mkl", ["numpy"], None):
        with pytest.raises(ValueError, match="cpu_linalg must be one of"):
            cpu_backend(bad)


def test_block_diagnostics_takes_a_backend_object_with_the_same_result():
    torch.manual_seed(0)
    w0 = {f"layers.{i}.fc.weight": torch.randn(6, 4) for i in range(3)}
    d = {k: 0.1 * torch.randn_like(v) for k, v in w0.items()}
    layout = find_blocks(w0.keys(), r"^layers\.(\d+)\.")
    by_name = block_diagnostics(w0, [d], layout, cpu_linalg="torch")
    by_object = block_diagnostics(w0, [d], layout, cpu_linalg=cpu_backend("torch"))
    assert torch.equal(by_name.e, by_object.e) and torch.equal(by_name.c, by_object.c)


@pytest.mark.parametrize("name", CPU_LINALG)
def test_a_cached_gram_is_pushed_not_recomputed(name):
    torch.manual_seed(1)
    w = torch.randn(7, 5, dtype=torch.float64)
    queue = RankQueue(chunk_bytes=1, linalg=cpu_backend(name))  # one matrix per buffer
    mats = KeyMatrices("w", w, device=None, dtype=torch.float64, linalg=cpu_backend(name))
    first = mats.queue_rank(w, queue)
    second = mats.queue_rank(w, queue)  # the Gram matrix is cached: pushed as a copy
    queue._flush_group((99, torch.float64, torch.device("cpu")))  # an empty group is a no-op
    queue.flush()
    assert queue.ranks[first] == pytest.approx(queue.ranks[second], rel=1e-12)
    assert queue.ranks[first] == pytest.approx(float(effective_rank(w)), rel=1e-12)


def test_gates_refuse_malformed_inputs():
    with pytest.raises(ValueError, match="1-D"):
        tiered_scales(torch.ones(2, 2), [0.5, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        standardize(torch.ones(2, 2))
    with pytest.raises(ValueError, match="finite on the valid blocks"):
        standardize(torch.tensor([1.0, math.inf]), torch.tensor([True, True]))
    with pytest.raises(ValueError, match="same length"):
        composite_score(torch.ones(3), torch.ones(2))
    assert torch.isnan(standardize(torch.ones(3), torch.zeros(3, dtype=torch.bool))).all()


def test_a_schedule_needs_one_block_with_an_update():
    layout = find_blocks(["layers.0.fc.weight", "layers.1.fc.weight"], r"^layers\.(\d+)\.")
    zero = BlockDiagnostics(e=torch.full((2,), math.nan), c=torch.full((2,), math.nan),
                            zero_update=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="every block's update is exactly zero"):
        build_schedule(zero, layout, eta=1.0, rho=0.5, non_block_scale=1.0, **GATE_KWARGS)


def test_svd_merger_lookup():
    assert svd_merger({"_target_": "fusion_bench.method.ISO_C_Merge"}) == "fusion_bench.method.ISO_C_Merge"
    assert svd_merger(ISO_C_Merge(scaling_factor=1.0)) == "fusion_bench.method.ISO_C_Merge"
    assert svd_merger(TaskArithmeticAlgorithm(scaling_factor=0.3)) is None
    assert svd_merger({"_target_": "no.such.Merger"}) is None  # fails later, wrapped, when instantiated


def test_delta_is_a_lazy_mapping_over_the_base_keys():
    base = {"a": torch.zeros(2), "b": torch.ones(2)}
    delta = Delta({"a": torch.ones(2), "b": torch.ones(2)}, base)
    assert list(delta) == ["a", "b"] and len(delta) == 2
    assert torch.equal(delta["a"], torch.ones(2)) and torch.equal(delta["b"], torch.zeros(2))


def test_block_pattern_lists_from_hydra_are_plain_lists():
    value = block_pattern_value(ListConfig([r"^layers\.(\d+)\."]))
    assert value == [r"^layers\.(\d+)\."] and type(value) is list
