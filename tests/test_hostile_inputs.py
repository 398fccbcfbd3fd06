"""Hostile input never gives a silent or wrong merge: each case is a clear error before any
output (or, for a corrupt rank cache, a recomputation with one warning), inputs untouched.

One group per item of the hostile-input issue: negative scales, all-zero tiers, a corrupt rank
cache, a bad ``rank_cache_dir``, broken checkpoints on disk, typo'd keys, bad base-merger
values, half-precision pools with SVD mergers, file modes. (Stale resumes are tested with the
resumable program's sweeps tests.)
"""

import json
import logging
import os
import re
import stat

import pytest
import torch
from fusion_bench import BaseAlgorithm, BaseModelPool
from fusion_bench.modelpool import CLIPVisionModelPool
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

import fusion_bench_larv.algorithm as algorithm_module
import fusion_bench_larv.watched_pool as watched_pool_module
from conftest import run_fusion_bench_failing
from fusion_bench_larv.algorithm import BaseMergerError, LARVAlgorithm, LARVIsoC
from fusion_bench_larv.atomic import atomic_write_json
from fusion_bench_larv.blocks import find_blocks
from fusion_bench_larv.defaults import BASE_MERGERS
from fusion_bench_larv.diagnostics import block_diagnostics
from fusion_bench_larv.gates import check_scales
from fusion_bench_larv.rank_cache import RankCache
from fusion_bench_larv.report import save_layer_report
from tiny_models import NUM_LAYERS, TinyPool

LAYER = "vision_model.encoder.layers"


@pytest.fixture(scope="module")
def pools():
    return TinyPool(num_tasks=2)


@pytest.fixture
def no_output(monkeypatch):
    """Fail if the layer report would be written: errors must come before any output."""
    def forbidden(*args, **kwargs):
        raise AssertionError("output written before the error")
    monkeypatch.setattr(algorithm_module, "save_layer_report", forbidden)


class RecordingMerger(BaseAlgorithm):
    """Task arithmetic (λ = 0.3) that records whether it ran, or raises ``error``."""

    def __init__(self, error=None, **kwargs):
        super().__init__(**kwargs)
        self.error, self.calls = error, 0

    def run(self, modelpool):
        self.calls += 1
        if self.error is not None:
            raise self.error
        from fusion_bench.method import TaskArithmeticAlgorithm

        return TaskArithmeticAlgorithm(scaling_factor=0.3).run(modelpool)


def larv(**kwargs):
    return LARVAlgorithm(base_method=dict(BASE_MERGERS["task_arithmetic"]), **kwargs)


# ------------------------------------------------------------------ 1. every λ finite and >= 0
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gate="continuous", amplitude=3.0), "amplitude 3.0"),
        (dict(gate="continuous", amplitude=1.5, min_scale=None), "amplitude 1.5"),
        (dict(gate="linear_depth", lines_alpha=-0.1), "lines_alpha -0.1"),
        (dict(gate="linear_depth", lines_alpha=0.6, lines_beta=-1.0), r"lines_alpha \+ lines_beta = 0.6 \+ -1.0"),
        (dict(gate="continuous", max_scale=0.0), "max_scale 0"),
    ],
)
def test_gate_parameters_that_give_negative_or_zero_scales_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        larv(**kwargs)


def test_a_clamp_makes_a_large_amplitude_safe(pools):
    algo = larv(gate="continuous", amplitude=3.0, min_scale=0.0)
    algo.run(pools())
    scales = [r["scale"] for r in algo.record["blocks"]]
    assert min(scales) >= 0 and max(scales) > 1.5  # the amplitude acts, the clamp holds


def test_continuous_amplitude_3_used_to_flip_task_vectors(pools, no_output):
    """The reported case: rc 0 and blocks with λ ≈ -2. Now an error naming the key and value."""
    with pytest.raises(ValueError, match=r"amplitude 3.0 > 1.*1 - a = -2.0"):
        larv(gate="continuous", amplitude=3).run(pools())


@pytest.mark.parametrize(
    "attribute, value, match",
    [("amplitude", 3.0, r"gate 'continuous' gave block \d the scale λ = -"),
     ("tiers", [0.0, 0.0], "gate 'tiered' gave every block λ = 0")],
)
def test_the_schedule_is_checked_again_before_anything_is_scaled(pools, no_output, attribute, value, match):
    """Parameters changed after __init__ bypass its checks: the final check still catches them."""
    algo = larv(gate="continuous" if attribute == "amplitude" else "tiered")
    setattr(algo, attribute, value)
    with pytest.raises(ValueError, match=match):
        algo.run(pools())


def test_final_schedule_check_names_the_gate_and_the_scale():
    valid = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"gate 'custom' gave block 2 the scale λ = -0.5"):
        check_scales(torch.tensor([1.0, 0.5, -0.5, 1.0], dtype=torch.float64), valid, "custom")
    with pytest.raises(ValueError, match="finite"):
        check_scales(torch.tensor([1.0, float("nan"), 1.0, 1.0], dtype=torch.float64), valid, "custom")
    with pytest.raises(ValueError, match="every block λ = 0"):
        check_scales(torch.zeros(4, dtype=torch.float64), valid, "custom")
    check_scales(torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), valid, "custom")


# ------------------------------------------------------------------ 2. at least one λ > 0
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tiers=[0, 0, 0]), r"tiers \[0.0, 0.0, 0.0\] are all 0"),
        (dict(tiers=[0.0, 0.0]), "are all 0"),
        (dict(gate="linear_depth", lines_alpha=0.0, lines_beta=0.0), "lines_alpha = lines_beta = 0"),
    ],
)
def test_schedules_that_switch_every_block_off_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        larv(**kwargs)


def test_all_zero_tiers_used_to_return_the_pretrained_model(pools, no_output):
    with pytest.raises(ValueError, match="all 0"):
        larv(tiers=[0, 0, 0]).run(pools())


# ------------------------------------------------------------------ 3. rank cache checked on read
@pytest.fixture
def filled_cache(pools, tmp_path):
    theta0 = pools.pretrained_state()
    merged = {k: v + 0.01 for k, v in theta0.items()}
    layout = find_blocks(theta0.keys())
    reference = block_diagnostics(theta0, [merged], layout)
    directory = tmp_path / "ranks"
    block_diagnostics(theta0, [merged], layout, rank_cache=RankCache(directory))
    return theta0, merged, layout, reference, directory


def _corrupt(path, edit):
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "corruption, reason",
    [
        (lambda p: _corrupt(p, lambda r: r.update(r_eff=50 * r["r_eff"])), "impossible for shape"),
        (lambda p: _corrupt(p, lambda r: r.update(r_eff=0.9 * r["r_eff"])), "digest"),
        (lambda p: _corrupt(p, lambda r: r.update(key=["other", [2, 2], "x", "torch.float64"])), "key"),
        (lambda p: _corrupt(p, lambda r: r.pop("digest")), "needs key, r_eff and digest"),
        (lambda p: _corrupt(p, lambda r: r.update(r_eff=float("nan"))), "unreadable|not a finite"),
        (lambda p: p.write_text(p.read_text()[:10]), "unreadable"),
    ],
    ids=["x50", "edited-in-range", "other-key", "no-digest", "nan", "truncated"],
)
def test_a_bad_rank_cache_entry_is_recomputed_and_rewritten_with_one_warning(
    filled_cache, caplog, corruption, reason
):
    theta0, merged, layout, reference, directory = filled_cache
    path = sorted(directory.glob("*.json"))[0]
    good = path.read_text()
    corruption(path)
    cache = RankCache(directory)
    with caplog.at_level(logging.WARNING, logger="fusion_bench_larv.diagnostics"):
        again = block_diagnostics(theta0, [merged], layout, rank_cache=cache)
        block_diagnostics(theta0, [merged], layout, rank_cache=RankCache(directory))  # file fixed
    torch.testing.assert_close(again.e, reference.e, rtol=1e-12, atol=0, equal_nan=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0], warnings
    assert re.search(reason, warnings[0]), warnings[0]
    assert json.loads(path.read_text()) == json.loads(good)  # rewritten, valid again


def test_a_cache_with_every_rank_multiplied_by_50_no_longer_changes_the_merge(pools, tmp_path, caplog):
    """The reported case, through LARV: valid JSON with r_eff x 50 moved e and reordered tiers."""
    from fusion_bench_larv.rank_cache import process_rank_cache

    directory = tmp_path / "ranks"
    first = larv(rank_cache_dir=str(directory))
    first.run(pools())
    files = sorted(directory.glob("*.json"))
    for path in files:
        _corrupt(path, lambda r: r.update(r_eff=50 * r["r_eff"]))
    process_rank_cache(str(directory)).clear()  # as in a new process: read the files again
    second = larv(rank_cache_dir=str(directory))
    with caplog.at_level(logging.WARNING, logger="fusion_bench_larv.diagnostics"):
        second.run(pools())
    assert [(r["e"], r["scale"]) for r in second.record["blocks"]] == \
        [(r["e"], r["scale"]) for r in first.record["blocks"]]
    warned = [r.getMessage() for r in caplog.records if "rank cache" in r.getMessage()]
    assert len(warned) == len(files) > 0 and all("impossible for shape" in w for w in warned)


def test_rank_cache_dir_that_is_a_file_fails_before_the_base_merger(pools, tmp_path, no_output):
    not_a_dir = tmp_path / "ranks"
    not_a_dir.write_text("")
    merger = RecordingMerger()
    with pytest.raises(ValueError, match=r"rank_cache_dir .*ranks.*a file"):
        LARVAlgorithm(base_method=merger, rank_cache_dir=str(not_a_dir)).run(pools())
    assert merger.calls == 0
    with pytest.raises(ValueError, match="rank_cache_dir .* not a writable folder"):
        LARVAlgorithm(base_method=merger, rank_cache_dir=str(not_a_dir / "sub")).run(pools())
    assert merger.calls == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_rank_cache_dir_fails_before_the_base_merger(pools, tmp_path, no_output):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    merger = RecordingMerger()
    try:
        with pytest.raises(ValueError, match="rank_cache_dir .* not a writable folder"):
            LARVAlgorithm(base_method=merger, rank_cache_dir=str(folder)).run(pools())
    finally:
        folder.chmod(0o700)
    assert merger.calls == 0


# ------------------------------------------------------------------ 4. checkpoints on disk
@pytest.fixture(scope="module")
def on_disk(pools, tmp_path_factory):
    """Tiny CLIP checkpoints saved to disk: the pretrained tower and two fine-tuned ones."""
    root = tmp_path_factory.mktemp("checkpoints")
    dirs = {"_pretrained_": root / "pretrained"}
    pools.pretrained.save_pretrained(dirs["_pretrained_"])
    for name, model in pools.tasks.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
    return {k: str(v) for k, v in dirs.items()}


def broken_copy(source, target, edit, safe=True):
    """A copy of the checkpoint folder ``source`` whose tensors went through ``edit``."""
    import shutil

    shutil.copytree(source, target)
    weights = os.path.join(target, "model.safetensors")
    tensors = edit(dict(load_file(weights)))
    if safe:
        save_file(tensors, weights, metadata={"format": "pt"})
    else:
        os.unlink(weights)
        torch.save(tensors, os.path.join(target, "pytorch_model.bin"))
    return str(target)


def fc1(i):
    return f"{LAYER}.{i}.mlp.fc1.weight"


def drop(key):
    return lambda t: {k: v for k, v in t.items() if k != key}


def reshape(key):
    return lambda t: {**t, key: torch.zeros(t[key].shape[0] + 1, t[key].shape[1])}


def add(key, shape):
    return lambda t: {**t, key: torch.zeros(shape)}


def snapshot_files(dirs):
    return {name: {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}
            for name, d in dirs.items()}


def test_healthy_checkpoints_on_disk_merge(on_disk):
    pool = CLIPVisionModelPool(DictConfig(on_disk))
    algo = larv()
    algo.run(pool)
    assert len(algo.record["blocks"]) == NUM_LAYERS


def test_a_full_clip_checkpoint_as_pretrained_is_accepted(pools, tmp_path):
    """As with openai/clip-vit-*: the pretrained checkpoint also holds the text tower, which a
    CLIPVisionModel does not load; the vision-only fine-tuned checkpoints match its vision tower."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    config = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=50),
                        vision_config=pools.pretrained.config.to_dict(), projection_dim=16)
    full = CLIPModel(config)
    full.vision_model.load_state_dict(pools.pretrained.vision_model.state_dict())
    full.save_pretrained(tmp_path / "full")
    dirs = {"_pretrained_": str(tmp_path / "full")}
    for name, model in pools.tasks.items():
        model.save_pretrained(tmp_path / name)
        dirs[name] = str(tmp_path / name)
    merged = larv().run(CLIPVisionModelPool(DictConfig(dirs)))
    assert isinstance(merged, CLIPVisionModel)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize(
    "edit, match",
    [
        (drop(fc1(2)), rf"model 'bad': the checkpoint .* has no tensor '{fc1(2)}' \(the pretrained model has it "
                       r"with shape \(64, 32\)\)"),
        (reshape(fc1(1)), rf"model 'bad': tensor '{fc1(1)}' has shape \(65, 32\) in the checkpoint .*, the "
                          r"pretrained model has \(64, 32\)"),
        (add(fc1(NUM_LAYERS), (64, 32)), rf"model 'bad': the checkpoint .* has tensor '{fc1(NUM_LAYERS)}' "
                                         r"with shape \(64, 32\), which the pretrained model does not have"),
    ],
    ids=["missing", "shape", "extra"],
)
def test_broken_checkpoint_on_disk_is_an_error_naming_model_key_and_shapes(
    on_disk, tmp_path, no_output, edit, match, safe
):
    dirs = {**on_disk, "bad": broken_copy(on_disk["task0"], tmp_path / "bad", edit, safe=safe)}
    before = snapshot_files(dirs)
    merger = RecordingMerger()
    with pytest.raises(ValueError, match=match):
        LARVAlgorithm(base_method=merger).run(CLIPVisionModelPool(DictConfig(dirs)))
    assert merger.calls == 0  # before anything is merged
    assert snapshot_files(dirs) == before  # inputs untouched


def test_a_checkpoint_not_on_disk_before_loading_is_checked_right_after(on_disk, tmp_path, no_output, monkeypatch):
    """A hub id not in the local cache yet: its files are read as soon as the pool downloaded it."""
    from fusion_bench_larv.checkpoints import checkpoint_path

    dirs = {**on_disk, "bad": broken_copy(on_disk["task0"], tmp_path / "bad", drop(fc1(2)))}
    calls = []

    def not_downloaded_yet(config):
        calls.append(config)
        first_look = sum(c == dirs["bad"] for c in calls) == 1
        return None if config == dirs["bad"] and first_look else checkpoint_path(config)

    monkeypatch.setattr(watched_pool_module, "checkpoint_path", not_downloaded_yet)
    merger = RecordingMerger()
    with pytest.raises(ValueError, match=rf"model 'bad': .* no tensor '{fc1(2)}'"):
        LARVAlgorithm(base_method=merger).run(CLIPVisionModelPool(DictConfig(dirs)))
    assert merger.calls == 1 and calls.count(dirs["bad"]) == 2


def test_broken_pretrained_checkpoint_and_config_entries_are_checked(on_disk, tmp_path, no_output):
    """The pretrained checkpoint itself, and a ``from_pretrained`` config entry (BaseModelPool)."""
    bad_pretrained = broken_copy(on_disk["_pretrained_"], tmp_path / "p", drop(fc1(0)))
    with pytest.raises(ValueError, match=rf"model '_pretrained_': .* no tensor '{fc1(0)}'"):
        larv().run(CLIPVisionModelPool(DictConfig({**on_disk, "_pretrained_": bad_pretrained})))
    dirs = {**on_disk, "task1": broken_copy(on_disk["task1"], tmp_path / "t", drop(fc1(3)))}
    pool = BaseModelPool(DictConfig({
        name: {"_target_": "transformers.CLIPVisionModel.from_pretrained", "pretrained_model_name_or_path": path}
        for name, path in dirs.items()
    }))
    with pytest.raises(ValueError, match=rf"model 'task1': .* no tensor '{fc1(3)}'"):
        larv().run(pool)


# ------------------------------------------------------------------ 5. unknown keys
@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (LARVIsoC, dict(gatee="tiered"), r"LARVIsoC: unknown key 'gatee' = 'tiered' \(did you mean 'gate'\?\)"),
        (LARVAlgorithm, dict(tier=[0.1, 0.2]), r"unknown key 'tier' .*did you mean 'tiers'\?"),
        (LARVIsoC, dict(amplitud=0.3), r"did you mean 'amplitude'\?"),
        (LARVIsoC, dict(zzz=1), r"unknown key 'zzz' = 1; valid keys"),
    ],
)
def test_unknown_keys_are_an_error_with_the_closest_valid_key(cls, kwargs, match):
    if cls is LARVAlgorithm:
        kwargs = dict(base_method=dict(BASE_MERGERS["task_arithmetic"]), **kwargs)
    with pytest.raises(TypeError, match=match):
        cls(**kwargs)


def test_fusion_bench_keys_stay_accepted():
    from fusion_bench.utils import instantiate

    LARVIsoC(_recursive_=False, _usage_="test", _version_=None)
    algo = instantiate(DictConfig({"_target_": "fusion_bench_larv.algorithm.LARVIsoC", "_recursive_": False,
                                   "_usage_": "x", "tiers": [0.5, 1.0]}), _recursive_=False)
    assert algo.tiers == [0.5, 1.0]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["+method.tier=[0.1,0.2]"], ["unknown key 'tier'", "did you mean 'tiers'?"]),
        (["method.gate=continuous", "method.amplitude=3"], ["amplitude 3.0 > 1"]),
        (["method.base_method.scaling_factor=abc"], ["base_method.scaling_factor must be a real number, got 'abc'"]),
    ],
    ids=["typo", "amplitude", "base-value"],
)
def test_bad_input_through_the_cli_fails_before_any_output(tiny_synth, tmp_path, overrides, expected):
    """The reported CLI cases (items 1, 5, 6): each used to run with rc 0 or fail deep inside."""
    output = run_fusion_bench_failing([*tiny_synth.overrides(), "method=larv_iso_c", *overrides], tmp_path)
    for text in expected:
        assert text in output, output[-3000:]


# ------------------------------------------------------------------ 6. base-merger errors
@pytest.mark.parametrize("key", ["scaling_factor", "alpha", "common_space_fraction"])
def test_non_numeric_base_merger_values_are_an_error_naming_the_key(key):
    base = {**BASE_MERGERS["iso_cts"], key: "abc"}
    with pytest.raises(TypeError, match=rf"base_method.{key} must be a real number, got 'abc'"):
        LARVAlgorithm(base_method=base)


def test_errors_inside_the_base_merger_name_merger_config_and_phase(pools, no_output):
    original = RuntimeError("boom")
    with pytest.raises(BaseMergerError, match=r"RecordingMerger failed while merging the fine-tuned "
                                              r"models.*RuntimeError: boom") as info:
        LARVAlgorithm(base_method=RecordingMerger(error=original)).run(pools())
    assert info.value.__cause__ is original
    assert "base_method config" in str(info.value) and "gate=tiered" in str(info.value)
    with pytest.raises(BaseMergerError, match=r"apply: pre") as info:
        # `pre` with `task_vectors` runs the merger once, on the rescaled models
        LARVAlgorithm(base_method=RecordingMerger(error=original), apply="pre", source="task_vectors").run(pools())
    assert info.value.__cause__ is original


class HalfWayMerger(BaseAlgorithm):
    """Writes into the pretrained model, as task arithmetic does, then fails."""

    def run(self, modelpool):
        with torch.no_grad():
            for p in modelpool.load_pretrained_model().parameters():
                p.add_(1.0)
        raise RuntimeError("failed half-way")


def test_a_merger_failing_half_way_leaves_the_in_memory_pretrained_model_untouched(pools, no_output):
    pool = pools()
    before = {k: v.clone() for k, v in pool.load_pretrained_model().state_dict().items()}
    with pytest.raises(BaseMergerError, match="failed half-way"):
        LARVAlgorithm(base_method=HalfWayMerger()).run(pool)
    after = pool.load_pretrained_model().state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_a_base_merger_that_cannot_be_instantiated_is_wrapped(pools, no_output):
    base = {**BASE_MERGERS["iso_c"], "no_such_key": 1}  # ISO_C_Merge takes no **kwargs
    with pytest.raises(BaseMergerError, match=r"ISO_C_Merge failed while being instantiated.*no_such_key") as info:
        LARVAlgorithm(base_method=base).run(pools())
    assert info.value.__cause__ is not None


# ------------------------------------------------------------------ 7. half precision + SVD mergers
@pytest.fixture(scope="module")
def half_pools():
    return {dtype: TinyPool(num_tasks=2, dtype=dtype) for dtype in (torch.float16, torch.bfloat16)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("merger", ["iso_c", "iso_cts", "tsvm"])
def test_half_precision_pool_with_an_svd_merger_fails_first_saying_how_to_load_float32(
    half_pools, dtype, merger, no_output
):
    pool = half_pools[dtype]
    with pytest.raises(ValueError, match=rf"model '_pretrained_' is in {dtype}.*{BASE_MERGERS[merger]['_target_']}"
                                         r".*Load the models in float32.*model.float\(\).*torch_dtype: float32"):
        LARVAlgorithm(base_method=dict(BASE_MERGERS[merger])).run(pool())


def test_the_bare_svd_merger_indeed_fails_on_half_precision_and_task_arithmetic_is_not_refused(half_pools):
    from fusion_bench.utils import instantiate

    pool = half_pools[torch.float16]
    with pytest.raises(NotImplementedError, match="Half"):
        instantiate(dict(BASE_MERGERS["iso_c"]), _recursive_=False).run(pool())
    merged = larv().run(pool())
    assert next(merged.parameters()).dtype == torch.float16


def test_a_half_fine_tuned_model_in_a_float32_pool_is_caught_as_it_is_loaded(pools, no_output):
    import copy

    half = copy.deepcopy(pools.tasks["task1"]).to(torch.float16)
    with pytest.raises(ValueError, match=r"model 'task1' is in torch.float16"):
        LARVIsoC().run(pools(task1=half))


# ------------------------------------------------------------------ 10. file modes follow the umask
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_file_we_write_follows_the_umask(filled_cache, tmp_path, umask_027):
    record = {"gate": "tiered", "source": "merged", "base_method": {"_target_": "x.Y"},
              "blocks": [{"index": 0, "prefix": "b.0.", "e": 1.0, "c": 0.1, "z": 0.0, "s": 1.0,
                          "tier": 0, "scale": 1.0, "zero_update": False}]}
    paths = save_layer_report(record, tmp_path / "report")
    atomic_write_json(tmp_path / "job" / "job.json", {"a": 1})
    theta0, merged, layout, _, _ = filled_cache
    block_diagnostics(theta0, [merged], layout, rank_cache=RankCache(tmp_path / "new_ranks"))
    written = [*paths, tmp_path / "job" / "job.json", *sorted((tmp_path / "new_ranks").glob("*.json"))]
    assert len(written) > 5
    assert {str(p): mode(p) for p in written} == {str(p): umask_027 for p in written}
    # and a plain open() under the same umask, for comparison (what FusionBench's report gets)
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert mode(plain) == umask_027


def test_programs_write_job_records_with_the_shared_helper():
    import fusion_bench_larv.atomic as atomic
    import fusion_bench_larv.runs.programs as programs

    assert programs.atomic_write_json is atomic.atomic_write_json
