"""Validation splits: the embedded suite's ``data/<task>/val`` and the validation task pools.

- tinyclip_synth: every task gets a ``val`` split disjoint from its train and test splits
  (image bytes; for ``handwritten_digits`` the UCI source digits), drawn deterministically from
  its own stream, while train, test, pretraining data and the shipped weights stay what they
  were; a cache written before validation splits gets them on its next use.
- FusionBench's real pools: ``taskpool=CLIPVisionModelTaskPool/clip-vit-classification_<setting>[_B16|_L14]_val``
  compose from both primary config dirs, evaluate 10 % of each task's train split, and run
  through the real CLI on the hub-shaped cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch
import pytest
from omegaconf import OmegaConf

from fusion_bench_larv.atomic import atomic_dir
from fusion_bench_larv.synth import build as build_mod, datasets as datasets_mod
from fusion_bench_larv.synth import model as model_mod
from fusion_bench_larv.synth.build import VAL_FRACTION, Assets, Recipe, build
from fusion_bench_larv.synth.shipped import ShippedAssets
from fusion_bench_larv.synth.tasks import SUITES, TASK_NAMES, generate, handwritten_pool

from conftest import compose_config, run_hub_cli, tiny_recipe
from hub_fixture import IMAGE_DATASETS, TALL20, TRAIN_IMAGES
from test_config_discovery import BACKBONES, PRIMARY_DIRS, SETTINGS
from test_hub_cli import empty_cwd, reported_tasks, task_results, text_tower  # noqa: F401 (fixture)

HANDWRITTEN = "handwritten_digits"


def _split_images(assets: Assets, task: str, split: str) -> set:
    return {bytes(x) for x in datasets_mod.load_split(assets, task, split)[0]}


# --- tinyclip_synth: what the validation splits are ---------------------------------------------
def test_every_task_of_a_down_sized_build_has_a_disjoint_deterministic_val_split(tmp_path):
    recipe = tiny_recipe(layers=2, suite=20, pretrain_per_task=8, pretrain_steps=1, finetune_steps=1)
    assets = build(list(TASK_NAMES), cache_dir=tmp_path, recipe=recipe)
    assert recipe.n_val == int(recipe.n_train * VAL_FRACTION) == 6
    for task in TASK_NAMES:
        val = datasets_mod.load_split(assets, task, "val")
        assert len(val[0]) == recipe.n_val, task
        # the split is the generator's own "val" stream: the same for this seed, another for seed 1
        expected = generate(task, "val", recipe.n_val, seed=0)
        np.testing.assert_array_equal(val[0], expected[0])
        np.testing.assert_array_equal(val[1], expected[1])
        assert not np.array_equal(val[0], generate(task, "val", recipe.n_val, seed=1)[0]), task
        images = {bytes(x) for x in val[0]}
        assert not images & _split_images(assets, task, "train"), f"{task}: val shares images with train"
        assert not images & _split_images(assets, task, "test"), f"{task}: val shares images with test"


def test_handwritten_val_is_half_of_the_digits_held_out_from_pretraining_and_fine_tuning():
    val, test, train = (set(handwritten_pool(split, seed=0).tolist()) for split in ("val", "test", "train"))
    assert (len(val), len(test), len(train)) == (179, 180, 1438)
    assert not val & test and not val & train and not test & train
    assert val | test | train == set(range(1797))
    assert set(handwritten_pool("pretrain", seed=0).tolist()) == train  # pretraining draws from train's pool
    # val and test together are the 20 % held out before validation splits existed
    order = np.random.default_rng(np.random.SeedSequence([0, 7])).permutation(1797)
    assert val | test == set(order[:359].tolist())
    # the default recipe asks for more than either pool holds: both are used whole
    assert Recipe().n_val == 200
    assert len(generate(HANDWRITTEN, "val", Recipe().n_val, seed=0)[0]) == 179
    assert len(generate(HANDWRITTEN, "test", Recipe().n_test, seed=0)[0]) == 180
    with pytest.raises(ValueError, match=r"`split` must be one of \['train', 'val', 'test', 'pretrain'\], got 'validation'"):
        generate("shapes", "validation", 2, seed=0)


#: SHA-256 (first 16 hex digits) of 6 images, labels and captions of each task's train, test and
#: pretrain streams (handwritten_digits: train and pretrain; its test split shrank), recorded with
#: the generator before validation splits existed (commit d7d0ac0). A change means the data the
#: shipped weights were trained on, or the documented test sets, are no longer drawn.
GOLDEN = {
    "shapes": "b13f0d231bd18a88", "colors": "1b33ae10a828a465", "digits": "597d8b8524ae8df1",
    "handwritten_digits": "a93139bf0cd7876a", "textures": "1504fe2025b4c5c6", "letters": "2df54a8f93519573",
    "position": "40d42ac191ab9857", "counting": "1d10c463fef5c7c4", "orientation": "b5eca7250825a6fe",
    "size": "4ba0749afb1428fa", "noise": "b40f70dab5938412", "background": "36065074ed6c32a6",
    "fonts": "c0388cfe87f2487a", "arrows": "c9ba658c302e4ae4", "symbols": "a932856d8f7c35ed",
    "greek": "915458f163cc46e0", "brightness": "320b7007f787750a", "parity": "78b6e72196d22c64",
    "fill": "fb7d4732d58a9635", "case": "6e03b14266838eed",
}


def test_train_test_and_pretraining_streams_are_unchanged():
    def digest(task: str) -> str:
        h = hashlib.sha256()
        for split in ("train", "pretrain") if task == HANDWRITTEN else ("train", "test", "pretrain"):
            images, labels, captions = generate(task, split, 6, seed=0, with_captions=True)
            h.update(images.tobytes())
            h.update(labels.tobytes())
            h.update("\n".join(captions).encode())
        return h.hexdigest()[:16]

    assert {task: digest(task) for task in TASK_NAMES} == GOLDEN


def _fake_generate(task, split, n, seed, with_captions=False):
    """Two images per split (the recipe's sizes would take minutes to draw and save)."""
    rng = np.random.default_rng(zlib.crc32(f"{task}/{split}".encode()))
    return rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), np.arange(2, dtype=np.int64)


def _forbidden(*args, **kwargs):
    raise AssertionError("the shipped weights should have been copied, not trained")


def test_default_recipe_copies_the_shipped_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    source = ShippedAssets.find()
    assert source.matches(build_mod.MANIFEST_VERSION, Recipe().to_dict())  # n_val is not recorded
    assert "n_val" not in Recipe().to_dict()
    monkeypatch.setattr(build_mod, "generate", _fake_generate)
    monkeypatch.setattr(datasets_mod, "generate", _fake_generate)
    monkeypatch.setattr(model_mod, "pretrain", _forbidden)
    monkeypatch.setattr(model_mod, "finetune", _forbidden)
    assets = build(list(SUITES[8]), cache_dir=tmp_path, recipe=Recipe())
    assert assets.missing(list(SUITES[8])) == []
    assert all(assets.data(t, "val").is_dir() for t in SUITES[8])
    assert assets.read_manifest()["shipped"] == sorted(source.artefacts)
    pretrained = load_file(str(assets.pretrained / "model.safetensors"))
    for name, record in source.index["files"].items():
        if "delta_of" not in record:
            assert hashlib.sha256((assets.root / name).read_bytes()).hexdigest() == record["sha256"], name
            continue
        # a float16 task vector: the installed tower is the pretrained vision tower plus it
        delta = load_file(str(source.folder / name))
        tower = load_file(str(assets.root / name.rsplit("/", 1)[0] / "model.safetensors"))
        assert set(tower) == set(delta), name
        for key, d in delta.items():
            assert d.dtype == torch.float16 and tower[key].dtype == torch.float32
            torch.testing.assert_close(tower[key], pretrained[key] + d.float(), rtol=0, atol=0)


# --- tinyclip_synth: a cache from before validation splits --------------------------------------
def _arrow_digests(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.arrow"))}


def test_a_cache_without_val_splits_gets_them_on_use_and_a_fresh_handwritten_test(tmp_path, monkeypatch):
    from fusion_bench_larv.synth.pools import SynthCLIPTaskPool

    recipe = tiny_recipe(layers=2, suite=4, pretrain_steps=2, finetune_steps=1)
    tasks = ["shapes", HANDWRITTEN]
    assets = build(tasks, cache_dir=tmp_path, recipe=recipe)
    # the layout before validation splits: no val, and handwritten_digits' test drawn from all
    # 359 held-out digits (here: the whole held-out pool, a superset of the new val pool)
    for task in tasks:
        shutil.rmtree(assets.data(task, "val"))
    old_test = assets.data(HANDWRITTEN, "test")
    shutil.rmtree(old_test)
    datasets_mod.save_dataset(np.zeros((3, 32, 32, 3), np.uint8), np.arange(3), [str(d) for d in range(10)], old_test)
    before = {t: _arrow_digests(assets.data(t)) for t in tasks}
    weights = {p: p.read_bytes() for p in assets.root.rglob("model.safetensors")}
    assert assets.missing(tasks) == ["data/shapes/val", f"data/{HANDWRITTEN}"]

    drawn = []
    real_generate = datasets_mod.generate
    monkeypatch.setattr(datasets_mod, "generate", lambda t, s, *a, **k: drawn.append((t, s)) or real_generate(t, s, *a, **k))
    monkeypatch.setattr(model_mod, "pretrain", _forbidden)
    monkeypatch.setattr(model_mod, "finetune", _forbidden)
    pool = SynthCLIPTaskPool(tasks, cache_dir=str(tmp_path), split="val")
    assert drawn == [("shapes", "val"), (HANDWRITTEN, "train"), (HANDWRITTEN, "val"), (HANDWRITTEN, "test")]
    assert assets.missing(tasks) == []
    assert {t: c.dataset_path for t, c in pool._test_datasets.items()} == {t: str(assets.data(t, "val")) for t in tasks}
    # shapes keeps its train and test files; handwritten_digits is redrawn whole, its train as before
    after = {t: _arrow_digests(assets.data(t)) for t in tasks}
    assert {k: v for k, v in after["shapes"].items() if not k.startswith("val/")} == before["shapes"]
    assert {k: v for k, v in after[HANDWRITTEN].items() if k.startswith("train/")} == {
        k: v for k, v in before[HANDWRITTEN].items() if k.startswith("train/")}
    assert len(datasets_mod.load_split(assets, HANDWRITTEN, "test")[0]) == recipe.n_test
    np.testing.assert_array_equal(datasets_mod.load_split(assets, HANDWRITTEN, "test")[0],
                                  generate(HANDWRITTEN, "test", recipe.n_test, seed=0)[0])
    assert {p: p.read_bytes() for p in assets.root.rglob("model.safetensors")} == weights
    assert not list(tmp_path.rglob(".*.tmp*")), "temporary folders left behind"
    # the folders' digests are recorded again, now with their val split
    from fusion_bench_larv.synth.digests import verify

    assert verify(assets, assets.artefacts(tasks)) == ({}, [])
    assert any(k.startswith("val/") for k in assets.read_manifest()["digests"]["data/shapes"]["files"])


def test_atomic_dir_replace_swaps_a_folder_whole(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(OSError):
        with atomic_dir(target) as tmp:
            (tmp / "new").write_text("new")
    with pytest.raises(RuntimeError):
        with atomic_dir(target, replace=True) as tmp:
            (tmp / "new").write_text("new")
            raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["old"]  # a failed block leaves the old folder
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # nothing hidden left behind


# --- tinyclip_synth: the validation task pools ---------------------------------------------------
def test_synth_taskpool_split_is_validated_and_selects_the_split(tiny_synth):
    from fusion_bench_larv.synth.pools import SynthCLIPTaskPool, SynthCLIPVisionModelPool

    kw = dict(cache_dir=str(tiny_synth.cache_dir), build_if_missing=False)
    with pytest.raises(ValueError, match=r"`split` must be 'test' or 'val', got 'validation'"):
        SynthCLIPTaskPool(tiny_synth.tasks, split="validation", **kw)
    for split in ("test", "val"):
        pool = SynthCLIPTaskPool(tiny_synth.tasks, split=split, **kw)
        assert [c.dataset_path for c in pool._test_datasets.values()] == [
            str(tiny_synth.assets.data(t, split)) for t in tiny_synth.tasks]
    models = SynthCLIPVisionModelPool(tiny_synth.tasks, **kw)
    assert models.val_dataset_names == tiny_synth.tasks
    assert models._val_datasets["digits"].dataset_path == str(tiny_synth.assets.data("digits", "val"))


@pytest.mark.parametrize("where", sorted(PRIMARY_DIRS))
@pytest.mark.parametrize("n", [8, 14, 20])
def test_synth_val_taskpools_compose(where, n):
    cfg = compose_config(PRIMARY_DIRS[where], [f"modelpool=tinyclip_synth{n}", f"taskpool=larv/tinyclip_synth{n}_val",
                                               "modelpool.cache_dir=/somewhere"])
    test = compose_config(PRIMARY_DIRS[where], [f"modelpool=tinyclip_synth{n}", "modelpool.cache_dir=/somewhere"]).taskpool
    assert cfg.taskpool.split == "val" and "split" not in test
    assert {k: v for k, v in cfg.taskpool.items() if k != "split"} == dict(test)
    assert list(cfg.taskpool.tasks) == list(SUITES[n]) and cfg.taskpool.cache_dir == "/somewhere"


def test_synth_val_taskpool_through_the_cli(tiny_synth, tmp_path):
    report = tiny_synth.run_cli("method=simple_average", "taskpool=larv/tinyclip_synth8_val", log_dir=tmp_path / "run")
    assert reported_tasks(report) == tiny_synth.tasks
    config = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert config.taskpool.split == "val"


# --- FusionBench's real pools: validation task pools ---------------------------------------------
def _val_taskpool(setting: str, backbone: str) -> str:
    return f"CLIPVisionModelTaskPool/clip-vit-classification_{setting}{BACKBONES[backbone][1]}_val"


@pytest.mark.parametrize("where", sorted(PRIMARY_DIRS))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_val_taskpools_compose_on_the_train_split_of_the_test_pools_data(where, backbone, setting):
    hub_id = BACKBONES[backbone][0]
    overrides = ["method=dummy", f"modelpool=clip-vit-{backbone}_{setting}"]
    test = compose_config(PRIMARY_DIRS[where], overrides).taskpool
    val = compose_config(PRIMARY_DIRS[where], [*overrides, f"taskpool={_val_taskpool(setting, backbone)}"]).taskpool
    assert list(val.test_datasets) == list(test.test_datasets) == list(TALL20[: SETTINGS[setting]])
    assert val.base_model == val.clip_model.pretrained_model_name_or_path == hub_id
    strip = lambda pool: {k: v for k, v in OmegaConf.to_container(pool).items() if k != "test_datasets"}
    # same text tower, processor, dataloader settings (FusionBench's TA8_B16/_L14 spell out fewer keys)
    assert {k: v for k, v in strip(val).items() if k in strip(test)} == strip(test)
    for task, dataset in val.test_datasets.items():
        assert dataset._target_ == "fusion_bench.utils.data.train_validation_split", task
        assert (dataset.validation_fraction, dataset.validation_size, dataset.random_seed, dataset.return_split) == (
            0.1, None, 0, "val"), task
        # the test pool's data set, its train split
        loaded = {k: v for k, v in OmegaConf.to_container(dataset.dataset).items() if k != "split"}
        assert loaded == {k: v for k, v in OmegaConf.to_container(test.test_datasets[task]).items() if k != "split"}, task
        assert dataset.dataset.split == "train" and test.test_datasets[task].split in ("test", "validation"), task


def test_tall20_val_sets_are_a_tenth_of_train_and_disjoint_from_test(hub_cache, tmp_path):
    """Every TALL20 validation set loads from the hub-shaped cache: 2 of the 20 train images, none of the test images."""
    code = f"""
import json, sys
from fusion_bench.utils import instantiate
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import compose_config
from test_config_discovery import REPO_CONFIG
overrides = ["method=dummy", "modelpool=clip-vit-large-patch14_TALL20"]
val = compose_config(REPO_CONFIG, [*overrides, "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TALL20_L14_val"]).taskpool
test = compose_config(REPO_CONFIG, overrides).taskpool
out = {{}}
for task in val.test_datasets:
    v, t = instantiate(val.test_datasets[task]), instantiate(test.test_datasets[task])
    train = v.dataset
    key = lambda item: item["image"].tobytes()
    out[task] = dict(val=len(v), train=len(train), in_train=all(key(x) in {{key(y) for y in train}} for x in v),
                     in_test=any(key(x) in {{key(y) for y in t}} for x in v))
print("SIZES " + json.dumps(out))
"""
    output = run_hub_cli(["python", "-c", code], hub_cache, cwd=tmp_path)
    (line,) = [line for line in output.splitlines() if line.startswith("SIZES ")] or [output[-3000:]]
    sizes = json.loads(line[len("SIZES "):])
    assert list(sizes) == list(TALL20)
    expected = dict(val=int(TRAIN_IMAGES * 0.1), train=TRAIN_IMAGES, in_train=True, in_test=False)
    assert {task: s for task, s in sizes.items() if s != expected} == {}


@pytest.mark.slow
def test_val_taskpool_through_the_cli(hub_cache, tmp_path, empty_cwd):
    """A merge of the L/14 TALL20 pool evaluated on its validation task pool (all 20 val configs,
    ours and FusionBench's): 30-90 s on 2 shared cores, mostly the 20 zero-shot heads."""
    log_dir = tmp_path / "run"
    run_hub_cli(["fusion_bench", "method=simple_average", "modelpool=clip-vit-large-patch14_TALL20",
                 f"taskpool={_val_taskpool('TALL20', 'large-patch14')}", "taskpool.dataloader_kwargs.num_workers=0",
                 "taskpool.dataloader_kwargs.pin_memory=false", f"path.log_dir={log_dir}"], hub_cache, empty_cwd)
    report = json.loads((log_dir / "program_report.json").read_text())
    assert reported_tasks(report) == list(TALL20)
    results = task_results(report)
    assert all(0.0 <= results[t]["accuracy"] <= 1.0 for t in TALL20)
    assert text_tower(log_dir) == "openai/clip-vit-large-patch14"
    assert set(IMAGE_DATASETS) == set(TALL20)
