"""The weights shipped in the package (synth/shipped.py): digests, what a build copies, ``ship``."""

from __future__ import annotations

import json

import pytest

from fusion_bench_larv.synth import build as build_mod
from fusion_bench_larv.synth import model as model_mod
from fusion_bench_larv.synth.__main__ import main as synth_main
from fusion_bench_larv.synth.build import MANIFEST_VERSION, Recipe, build
from fusion_bench_larv.synth.ship import ship
from fusion_bench_larv.synth.shipped import SHIPPED_ROOT, ShippedAssets
from fusion_bench_larv.synth.tasks import SUITES, TASK_NAMES

from conftest import tiny_recipe


def test_shipped_weights_match_their_digests_and_the_default_recipe():
    source = ShippedAssets.find()
    assert source is not None, f"no shipped weights under {SHIPPED_ROOT}"
    source.verify()  # every file present, with its recorded SHA-256 (not a Git LFS pointer)
    assert source.index["version"] == MANIFEST_VERSION
    assert source.index["recipe"] == Recipe().to_dict()
    assert source.artefacts == sorted(["pretrained", *(f"finetuned/{t}" for t in SUITES[8])])
    files = [p for p in source.folder.rglob("*") if p.is_file() and p.name != "index.json"]
    assert sorted(str(p.relative_to(source.folder)) for p in files) == sorted(source.index["files"])
    for path in files:
        assert path.stat().st_size == source.index["files"][str(path.relative_to(source.folder))]["bytes"]
    assert sum(p.stat().st_size for p in files) <= 30e6


def _forbidden(*args, **kwargs):
    raise AssertionError("this model should have been copied, not trained")


def test_build_copies_the_shipped_weights_only_where_they_are_this_builds(tmp_path, monkeypatch, caplog):
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=3, finetune_steps=2)
    tasks = list(TASK_NAMES[:2])
    made = build(tasks, cache_dir=tmp_path / "made", recipe=recipe, shipped=False)
    root = tmp_path / "shipped"
    assert set(ship(made, tasks=tasks[:1], root=root).values()) == {"new"}
    source = ShippedAssets.find(root)
    assert source.artefacts == ["finetuned/" + tasks[0], "pretrained"]
    assert source.index["recipe"] == recipe.to_dict()
    # the rebuild command, down-sized: training again from the seed gives the recorded digests
    again = build(tasks[:1], cache_dir=tmp_path / "again", recipe=recipe, shipped=False)
    assert set(ship(again, tasks=tasks[:1], root=root).values()) == {"same"}

    # the shipped pretrained model and tower are copied; the tower not shipped is trained
    trained = []
    real_finetune = model_mod.finetune
    monkeypatch.setattr(model_mod, "pretrain", _forbidden)
    monkeypatch.setattr(model_mod, "finetune", lambda *a, **kw: trained.append(kw["desc"]) or real_finetune(*a, **kw))
    with caplog.at_level("INFO", logger=build_mod.__name__):
        got = build(tasks, cache_dir=tmp_path / "copy", recipe=recipe, shipped=root)
    assert trained == [f"fine-tune {tasks[1]}"]
    # one line for the copies and one per stage, none per artefact (a progress bar counts those)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert [line.split(" from ")[0] for line in lines if line.startswith("copied")] == [f"copied pretrained; finetuned (1): {tasks[0]}"]
    assert any(line.startswith("generated 2 dataset(s) in ") for line in lines)
    assert any(line.startswith("fine-tuned 1 tower(s) in ") for line in lines)
    assert not [line for line in lines if line.startswith("built")], lines
    assert got.read_manifest()["shipped"] == sorted(["pretrained", f"finetuned/{tasks[0]}"])
    for name in ("pretrained/model.safetensors", *(f"finetuned/{t}/model.safetensors" for t in tasks)):
        assert (got.root / name).read_bytes() == (made.root / name).read_bytes(), name
    monkeypatch.undo()

    # another recipe, or `shipped=False`: everything is trained
    for kw in ({"recipe": tiny_recipe(layers=2, suite=2, pretrain_steps=4, finetune_steps=2), "shipped": root}, {"recipe": recipe, "shipped": False}):
        trained.clear()
        monkeypatch.setattr(model_mod, "finetune", lambda *a, **k: trained.append(k["desc"]) or real_finetune(*a, **k))
        other = build(tasks[:1], cache_dir=tmp_path / f"other{kw['shipped'] is False}", **kw)
        monkeypatch.undo()
        assert trained == [f"fine-tune {tasks[0]}"] and "shipped" not in other.read_manifest()


def test_half_delta_towers_ship_at_half_size_and_install_within_rounding(tmp_path, monkeypatch):
    """``ship --half-deltas``: a tower is stored as its float16 task vector and installed as
    pretrained + delta in float32, each weight within float16 rounding of the task-vector entry."""
    import torch
    from safetensors.torch import load_file

    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=3, finetune_steps=4)
    tasks = list(TASK_NAMES[:2])
    made = build(tasks, cache_dir=tmp_path / "made", recipe=recipe, shipped=False)
    full, half = tmp_path / "full", tmp_path / "half"
    ship(made, tasks=tasks, root=full)
    ship(made, tasks=tasks, root=half, half_deltas=True)
    index = ShippedAssets.find(half).index["files"]
    for task in tasks:
        name = f"finetuned/{task}/model.delta-f16.safetensors"
        assert index[name]["delta_of"] == "pretrained/model.safetensors"
        assert f"finetuned/{task}/model.safetensors" not in index
        assert index[name]["bytes"] < 0.55 * ShippedAssets.find(full).index["files"][f"finetuned/{task}/model.safetensors"]["bytes"]
    assert "delta_of" not in index["pretrained/model.safetensors"]

    monkeypatch.setattr(model_mod, "finetune", _forbidden)
    got = build(tasks, cache_dir=tmp_path / "copy", recipe=recipe, shipped=half)
    assert got.read_manifest()["shipped"] == sorted(["pretrained", *(f"finetuned/{t}" for t in tasks)])
    assert (got.pretrained / "model.safetensors").read_bytes() == (made.pretrained / "model.safetensors").read_bytes()
    base = load_file(str(made.pretrained / "model.safetensors"))
    for task in tasks:
        built = load_file(str(made.finetuned(task) / "model.safetensors"))
        installed = load_file(str(got.finetuned(task) / "model.safetensors"))
        assert set(installed) == set(built)
        moved = 0
        for key, w in built.items():
            tau = w - base[key]
            assert installed[key].dtype == torch.float32
            err = (installed[key] - w).abs()
            # float16 rounding of tau (relative 2^-11), then the float32 sum's own rounding
            assert bool((err <= tau.abs() * 2.0**-11 + w.abs() * 2.0**-23 + 1e-7).all()), key
            moved += int((tau != 0).sum())
        assert moved > 0  # the towers differ from the pretrained model
    # the pools load the installed towers as any other
    from transformers import CLIPVisionModel

    CLIPVisionModel.from_pretrained(str(got.finetuned(tasks[0])))


def test_a_cache_with_its_own_pretrained_model_gets_no_shipped_tower(tmp_path, monkeypatch):
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=3, finetune_steps=2)
    tasks = list(TASK_NAMES[:1])
    made = build(tasks, cache_dir=tmp_path / "made", recipe=recipe, shipped=False)
    root = tmp_path / "shipped"
    ship(made, tasks=tasks, root=root)
    # a cache whose pretrained model is not the shipped one (here: trained with other weights)
    mine = build([], cache_dir=tmp_path / "mine", recipe=recipe, shipped=False)
    weights = mine.pretrained / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    trained = []
    real_finetune = model_mod.finetune
    monkeypatch.setattr(model_mod, "finetune", lambda *a, **kw: trained.append(kw["desc"]) or real_finetune(*a, **kw))
    build(tasks, cache_dir=tmp_path / "mine", recipe=recipe, shipped=root)
    assert trained == [f"fine-tune {tasks[0]}"]


def test_a_damaged_shipped_file_is_refused_before_anything_is_copied(tmp_path):
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=3, finetune_steps=2)
    tasks = list(TASK_NAMES[:1])
    root = tmp_path / "shipped"
    ship(build(tasks, cache_dir=tmp_path / "made", recipe=recipe, shipped=False), tasks=tasks, root=root)
    tower = ShippedAssets.find(root).folder / "finetuned" / tasks[0] / "model.safetensors"
    tower.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # what a Git LFS checkout leaves
    with pytest.raises(ValueError, match=rf"shipped tinyclip_synth file {tower} has SHA-256 [0-9a-f]{{64}}, the index records"):
        build(tasks, cache_dir=tmp_path / "cache", recipe=recipe, shipped=root)
    cache = tmp_path / "cache" / "tinyclip_synth_seed0"
    assert not (cache / "pretrained").exists() and not (cache / "finetuned").exists()
    assert not list(cache.rglob(".*.tmp*"))


def test_ship_cli_refuses_an_incomplete_build_and_reports_digests(tmp_path, capsys):
    recipe = tiny_recipe(layers=2, suite=8, pretrain_steps=2, finetune_steps=1, pretrain_per_task=8, n_train=16, n_test=8)
    made = build(list(SUITES[8][:2]), cache_dir=tmp_path / "made", recipe=recipe, shipped=False)
    with pytest.raises(ValueError, match=r"tinyclip_synth_seed0 lacks finetuned/digits, finetuned/handwritten_digits, .*, finetuned/arrows; build it first"):
        synth_main(["ship", "--cache-dir", str(tmp_path / "made"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    build(list(SUITES[8]), cache_dir=tmp_path / "made", recipe=recipe, shipped=False)
    assert synth_main(["ship", "--cache-dir", str(tmp_path / "made"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    index = json.loads((tmp_path / "out" / "tinyclip_synth_seed0" / "index.json").read_text())
    assert f"shipped {len(index['files'])} file(s)" in out and "pretrained/model.safetensors" in out
    assert index["tasks"] == list(SUITES[8]) and index["recipe"] == made.read_manifest()["recipe"]
    assert index["rebuild"].startswith("python -m fusion_bench_larv.synth build --tasks 8 --from-scratch")
