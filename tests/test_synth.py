"""The synthetic suite: generator, build (resume, recipe checks), pools and configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import yaml

from fusion_bench_larv.synth import build as build_mod
from fusion_bench_larv.synth import datasets as datasets_mod
from fusion_bench_larv.synth import model as model_mod
from fusion_bench_larv.synth.build import Assets, Recipe, build, default_cache_dir, ensure
from fusion_bench_larv.synth.tasks import SUITES, TASK_NAMES, TASKS, generate, prompts, suite_tasks

from conftest import OFFLINE_ENV, compose_config, fusion_bench_executable, tiny_recipe


# --- generator ----------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["shapes", "digits", "handwritten_digits", "counting", "fonts", "symbols"])
def test_generator_is_deterministic(task):
    a, ya = generate(task, "train", 24, seed=0)
    b, yb = generate(task, "train", 24, seed=0)
    assert a.dtype == np.uint8 and a.shape == (24, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    c, _ = generate(task, "train", 24, seed=1)
    d, _ = generate(task, "test", 24, seed=0)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_glyphs_use_raqm_and_a_pillow_without_it_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from PIL import ImageFont

    from fusion_bench_larv.synth import tasks as tasks_mod

    assert tasks_mod._font("sans-serif", 20).layout_engine == ImageFont.Layout.RAQM
    real_check = tasks_mod.features.check
    monkeypatch.setattr(tasks_mod.features, "check", lambda name: False if name == "raqm" else real_check(name))
    tasks_mod._font.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"no Raqm support.*apt-get install libfribidi0"):
            generate("digits", "test", 2, seed=0)
        generate("shapes", "test", 2, seed=0)  # no glyph drawn: no text layout needed
        cache = tmp_path / "cache"
        with pytest.raises(RuntimeError, match="Raqm"):
            build(["shapes"], cache_dir=cache, recipe=tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=1))
        assert not cache.exists() or not any(cache.rglob("*"))
    finally:
        tasks_mod._font.cache_clear()


def test_suite_shape_and_prompts():
    assert len(TASK_NAMES) == 20 and len(set(TASK_NAMES)) == 20
    assert SUITES[14][:8] == SUITES[8] and SUITES[20][:14] == SUITES[14] and sorted(SUITES[20]) == sorted(TASK_NAMES)
    assert "handwritten_digits" in SUITES[8]  # real data in the 8-task suite
    # the suite order never changes what the generator draws: pretraining covers a suite's tasks
    # in the generator's order, which for the full suite is TASK_NAMES itself
    assert suite_tasks(20) == TASK_NAMES and set(suite_tasks(8)) == set(SUITES[8])
    for name in TASK_NAMES:
        classnames, templates = prompts(name)
        assert len(classnames) >= 2 and len(set(classnames)) == len(classnames), name
        assert templates and all(t.count("{}") == 1 for t in templates), name


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_is_balanced_varied_and_class_dependent(task):
    """Sanity of each task: all classes present, images vary, class means differ."""
    images, labels = generate(task, "test", 120, seed=0)
    k = len(TASKS[task].classnames)
    assert set(labels.tolist()) == set(range(k))
    assert images.reshape(len(images), -1).std(0).mean() > 10  # not constant images
    means = np.stack([images[labels == y].reshape(-1, 32 * 32 * 3).mean(0) for y in range(k)])
    assert np.abs(means - means.mean(0)).mean() > 0.5  # the label changes the pixels


def test_every_task_has_its_own_frame():
    """Each task's images carry its own two-ring frame (its image domain), the rest is free."""
    from fusion_bench_larv.synth.tasks import domain_colours

    assert len({domain_colours(i) for i in range(len(TASK_NAMES))}) == len(TASK_NAMES)
    with pytest.raises(ValueError, match="no frame for task index 20"):
        domain_colours(20)
    for i, task in enumerate(TASK_NAMES):
        images, _ = generate(task, "test", 6, seed=0)
        outer, inner = domain_colours(i)
        assert (images[:, 0, :] == outer).all() and (images[:, :, -1] == outer).all(), task
        assert (images[:, 1, 1:-1] == inner).all() and (images[:, 1:-1, -2] == inner).all(), task
        assert images[:, 2:-2, 2:-2].std() > 10, task  # the scene inside the frame varies


def test_handwritten_digits_is_real_data_with_disjoint_splits():
    from sklearn.datasets import load_digits

    train, _ = generate("handwritten_digits", "train", 5000, seed=0)
    val, _ = generate("handwritten_digits", "val", 5000, seed=0)
    test, _ = generate("handwritten_digits", "test", 5000, seed=0)
    assert len(train) + len(val) + len(test) == len(load_digits().target)
    # images are re-tinted/shifted per draw, so the sources are compared by index in
    # test_validation_splits.py (tasks.handwritten_pool): 20 % held out, half val, half test
    assert len(val) + len(test) == int(len(load_digits().target) * 0.2) and (len(val), len(test)) == (179, 180)


def test_captions_cover_every_task_vocabulary():
    text = []
    for task in TASK_NAMES:
        _, _, captions = generate(task, "pretrain", 240, seed=0, with_captions=True)
        text += captions
    corpus = " ".join(text).lower()  # the CLIP tokenizer lowercases
    for task in TASK_NAMES:
        classnames, _ = prompts(task)
        missing = [c for c in classnames if c.lower() not in corpus]
        assert not missing, f"{task}: class names never captioned: {missing}"


@pytest.mark.parametrize("task", ["shapes", "textures", "counting", "handwritten_digits"])
def test_captions_name_the_label_at_the_task_coverage(task):
    """A pretraining caption names its image's label with probability TASKS[task].coverage
    (the knob that sets zero-shot accuracy); otherwise the label word is left out."""
    from fusion_bench_larv.synth.tasks import TASKS

    n = 600
    _, labels, captions = generate(task, "pretrain", n, seed=0, with_captions=True)
    classnames, _ = prompts(task)

    def names_label(caption, label):
        words = caption.lower().replace(",", " ").split()
        name = classnames[label].lower().split()
        return any(words[i : i + len(name)] == name for i in range(len(words)))

    share = np.mean([names_label(c, int(y)) for c, y in zip(captions, labels)])
    coverage = TASKS[task].coverage
    assert 0 < coverage < 1
    # the label is also named by chance when another attribute mention spells it (rare), so
    # the share may exceed the coverage a little; 4 binomial sigmas either way
    sigma = np.sqrt(coverage * (1 - coverage) / n)
    assert coverage - 4 * sigma <= share <= coverage + 4 * sigma + 0.05, (share, coverage)


# --- model pieces -------------------------------------------------------------------------
def test_bpe_merges_follow_counts_and_break_ties_by_pair():
    # aab x2, ab x1, b x5: (a, b</w>) occurs 3 times, (a, a) twice; then (a, ab</w>) twice
    assert model_mod._train_merges({"aab": 2, "ab": 1, "b": 5}) == [("a", "b</w>"), ("a", "ab</w>")]
    # a tie (each pair once) goes to the smallest pair, whatever the insertion order
    assert model_mod._train_merges({"yz": 1, "xy": 1}) == [("x", "y</w>"), ("y", "z</w>")]
    assert model_mod._train_merges({"xy": 1, "yz": 1}) == [("x", "y</w>"), ("y", "z</w>")]


def test_tokenizer_is_the_same_in_every_process(tmp_path):
    """Two processes (different hash seeds) train the same merges on a tie-laden corpus."""
    code = (
        "import sys; from fusion_bench_larv.synth.model import _bpe_vocab; from fusion_bench_larv.synth.tasks import generate;"
        "_, _, c = generate('letters', 'pretrain', 200, 0, with_captions=True);"
        "words = {}\n"
        "for t in c:\n for w in t.replace(',', '').split(): words[w] = words.get(w, 0) + 1\n"
        "print('\\n'.join(_bpe_vocab(words)[1]))"
    )
    outs = [
        subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONHASHSEED=seed), capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2")
    ]
    assert outs[0] == outs[1] and len(outs[0].splitlines()) > 50


def test_processor_matches_training_pixels_and_fast_tokenizer(tiny_synth):
    from transformers import CLIPProcessor, CLIPTokenizer

    images, _ = generate("shapes", "test", 4, seed=0)
    processor = CLIPProcessor.from_pretrained(str(tiny_synth.assets.pretrained))
    from PIL import Image

    ours = model_mod.to_pixels(images)
    theirs = processor(images=[Image.fromarray(x) for x in images], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    slow = CLIPTokenizer.from_pretrained(str(tiny_synth.assets.pretrained))
    text = ['a photo of the number: "7".', "a small red circle at the top left, salt and pepper"]
    assert processor.tokenizer(text)["input_ids"] == slow(text)["input_ids"]


def test_finetuned_towers_differ_task_dependently(tiny_synth):
    models = tiny_synth.load_models()
    base = {k: v for k, v in models.pop("_pretrained_").state_dict().items()}
    vectors = {}
    for task, tower in models.items():
        sd = tower.state_dict()
        assert sd.keys() == base.keys()
        vectors[task] = torch.cat([(sd[k] - base[k]).flatten() for k in base])
        assert vectors[task].norm() > 1e-3, task
    tasks = list(vectors)
    for i, a in enumerate(tasks):
        for b in tasks[i + 1 :]:
            cos = torch.nn.functional.cosine_similarity(vectors[a], vectors[b], dim=0)
            assert cos < 0.99, (a, b, float(cos))


# --- build: resume, recipe, cache ---------------------------------------------------------
def test_build_is_resumable_and_rebuilds_only_what_is_missing(tmp_path, monkeypatch):
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=3, finetune_steps=2)
    tasks = list(TASK_NAMES[:2])
    umask = os.umask(0o022)
    try:
        assets = build(tasks, cache_dir=tmp_path, recipe=recipe)
    finally:
        os.umask(umask)
    assert assets.missing(tasks) == []
    # JSON files go through fusion_bench_larv.atomic: the mode a plain open() gives (0644 here)
    for path in (assets.manifest, assets.prompts):
        assert path.stat().st_mode & 0o777 == 0o644, (path, oct(path.stat().st_mode))
    manifest = assets.read_manifest()
    assert manifest["seed"] == 0 and manifest["recipe"] == recipe.to_dict()
    assert set(manifest["timings_s"]) >= {"pretrained", *(f"finetuned/{t}" for t in tasks), *(f"data/{t}" for t in tasks)}
    assert not list(tmp_path.rglob(".*.tmp*")), "temporary folders left behind"

    # a second call rebuilds nothing
    calls = []

    def forbidden(*args, **kwargs):
        raise AssertionError("nothing should be rebuilt")

    monkeypatch.setattr(build_mod, "generate", forbidden)  # pretraining images
    monkeypatch.setattr(datasets_mod, "generate", forbidden)  # the datasets
    monkeypatch.setattr(model_mod, "pretrain", forbidden)
    monkeypatch.setattr(model_mod, "finetune", forbidden)
    assert build(tasks, cache_dir=tmp_path, recipe=recipe).missing(tasks) == []
    assert build(tasks, cache_dir=tmp_path).missing(tasks) == []  # recipe read from the manifest

    # delete one artefact: only that one is rebuilt
    before = (assets.finetuned(tasks[0]) / "model.safetensors").read_bytes()
    shutil.rmtree(assets.finetuned(tasks[1]))
    monkeypatch.undo()
    real_finetune = model_mod.finetune

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(build_mod, "generate", forbidden)  # pretraining images
    monkeypatch.setattr(datasets_mod, "generate", forbidden)  # the datasets
    monkeypatch.setattr(model_mod, "pretrain", forbidden)
    monkeypatch.setattr(model_mod, "finetune", counting)
    build(tasks, cache_dir=tmp_path, recipe=recipe)
    assert calls == [f"fine-tune {tasks[1]}"]
    assert (assets.finetuned(tasks[0]) / "model.safetensors").read_bytes() == before
    assert assets.missing(tasks) == []


def test_rebuild_reproduces_the_same_weights(tmp_path):
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=3, finetune_steps=2)
    tasks = list(TASK_NAMES[:1])
    a = build(tasks, cache_dir=tmp_path / "a", recipe=recipe)
    b = build(tasks, cache_dir=tmp_path / "b", recipe=recipe)
    for path in ("pretrained/model.safetensors", f"finetuned/{tasks[0]}/model.safetensors"):
        assert (a.root / path).read_bytes() == (b.root / path).read_bytes(), path


def test_parallel_towers_write_the_same_weights(tmp_path):
    """``jobs=2`` fine-tunes the towers in two worker processes: the same bytes as one by one,
    every tower recorded with its time; a bad ``jobs`` is refused before anything is written."""
    recipe = tiny_recipe(layers=2, suite=3, pretrain_steps=3, finetune_steps=3)
    tasks = list(suite_tasks(3))
    a = build(tasks, cache_dir=tmp_path / "a", recipe=recipe)
    b = build(tasks, cache_dir=tmp_path / "b", recipe=recipe, jobs=2)
    for task in tasks:
        path = f"finetuned/{task}/model.safetensors"
        assert (a.root / path).read_bytes() == (b.root / path).read_bytes(), path
    manifest = b.read_manifest()
    assert set(manifest["digests"]) >= {f"finetuned/{t}" for t in tasks}
    assert all(manifest["timings_s"][f"finetuned/{t}"] > 0 for t in tasks)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`jobs` must be a whole number"):
            build(tasks, cache_dir=tmp_path / "c", recipe=recipe, jobs=bad)
    assert not (tmp_path / "c").exists()


def test_parallel_towers_are_recorded_as_they_arrive(tmp_path):
    """Each tower is recorded when its worker finishes, not when the last one does (a killed
    build then keeps the records, and the progress bar moves)."""
    import time

    from fusion_bench_larv.synth.build import _torch_seed
    from fusion_bench_larv.synth.towers import finetune_towers

    recipe = tiny_recipe(layers=2, suite=4, pretrain_steps=2, finetune_steps=40)
    tasks = list(suite_tasks(4))
    assets = build(tasks, cache_dir=tmp_path, recipe=recipe)
    for task in tasks:
        shutil.rmtree(assets.finetuned(task))
    recorded = []
    finetune_towers(assets, recipe, tasks, lambda t: _torch_seed(recipe, f"finetune/{t}"),
                    lambda t, s: recorded.append(time.time_ns()), jobs=2)
    written = sorted((assets.finetuned(t) / "model.safetensors").stat().st_mtime_ns for t in tasks)
    assert len(recorded) == 4 and min(recorded) < written[-1], (recorded, written)


def test_towers_use_the_pretrained_model_on_disk_not_one_loaded_before(tmp_path, monkeypatch):
    """A pretrained model rebuilt between two builds in one process is the one fine-tuned from."""
    from safetensors.torch import load_file

    from fusion_bench_larv.synth import model as M
    from fusion_bench_larv.synth import towers

    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=1)
    tasks = list(suite_tasks(2))[:1]
    other = build(tasks, cache_dir=tmp_path / "b", recipe=tiny_recipe(layers=2, suite=2, pretrain_steps=3, finetune_steps=1))
    first = build(tasks, cache_dir=tmp_path / "a", recipe=recipe)  # its model was loaded last
    weights = "pretrained/model.safetensors"
    key = "vision_model.embeddings.patch_embedding.weight"
    assert not torch.equal(load_file(str(first.root / weights))[key], load_file(str(other.root / weights))[key])
    # a new file in its place, as a rebuild's rename leaves it (an in-place overwrite would show
    # through the loaded model's memory map anyway)
    shutil.copyfile(other.root / weights, first.root / "new.safetensors")
    os.replace(first.root / "new.safetensors", first.root / weights)
    shutil.rmtree(first.finetuned(tasks[0]))
    seen = []
    finetune = M.finetune

    def spy(clip, *args, **kwargs):
        seen.append(clip.state_dict()[key].clone())
        return finetune(clip, *args, **kwargs)

    monkeypatch.setattr(M, "finetune", spy)
    towers.finetune_towers(first, recipe, tasks, lambda t: 0, lambda t, s: None)
    assert len(seen) == 1 and torch.equal(seen[0], load_file(str(other.root / weights))[key])


def test_a_failed_parallel_tower_names_its_task_and_keeps_the_others(tmp_path):
    from fusion_bench_larv.synth.towers import finetune_towers

    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=2)
    tasks = list(suite_tasks(2))
    assets = build(tasks[:1], cache_dir=tmp_path, recipe=recipe)  # the second task has no data
    shutil.rmtree(assets.finetuned(tasks[0]))
    recorded = []
    with pytest.raises(RuntimeError, match=f"tower of task '{tasks[1]}' failed in a worker process"):
        finetune_towers(assets, recipe, tasks, lambda t: 0, lambda t, s: recorded.append(t), jobs=2)
    assert recorded == [tasks[0]] and assets.finetuned(tasks[0]).is_dir()
    assert not assets.finetuned(tasks[1]).exists()


def test_task_grating_and_colour_mix_change_every_split_and_are_recorded(tmp_path):
    """``Recipe.task_grating`` / ``task_colour_mix``: each task's own fixed transform on every
    image it draws, recorded like every recipe field."""
    from fusion_bench_larv.synth.datasets import load_split
    from fusion_bench_larv.synth.domains import apply_domain

    assert Recipe().to_dict()["task_grating"] == 40.0 and Recipe().to_dict()["task_colour_mix"] == 0.25
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=1, task_grating=40.0, task_colour_mix=0.25)
    assert recipe.to_dict()["task_grating"] == 40.0 and Recipe(**recipe.to_dict()) == recipe
    for key in ("task_grating", "task_colour_mix"):
        with pytest.raises(ValueError, match=f"`{key}` must be >= 0"):
            Recipe(**{key: -1.0})
    tasks = list(suite_tasks(2))
    assets = build(tasks, cache_dir=tmp_path, recipe=recipe)
    assert assets.read_manifest()["recipe"]["task_colour_mix"] == 0.25
    for task in tasks:
        plain, labels = generate(task, "test", recipe.n_test, recipe.seed)
        stored, stored_labels = load_split(assets, task, "test")
        # the transform by hand: the task's colour mixing and grating, drawn from its name
        rng = np.random.default_rng(zlib.crc32(task.encode()))
        mix = np.eye(3) + 0.25 * rng.standard_normal((3, 3))
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.15, 0.8), rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:32, 0:32]
        wave = np.sin(freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)[..., None] * rng.uniform(0.5, 1.0, 3)
        expected = np.clip(plain.astype(np.float64) @ mix.T + 40.0 * wave, 0, 255).round().astype(np.uint8)
        assert np.array_equal(stored, expected) and np.array_equal(stored_labels, labels)
        assert not np.array_equal(stored, plain)
        assert apply_domain(plain, task, 0.0, 0.0) is plain
    a, b = (apply_domain(np.full((1, 32, 32, 3), 128, np.uint8), t, 40.0, 0.25) for t in tasks)
    assert not np.array_equal(a, b)  # each task its own
    # a folder built with them refuses a build without them, naming the field
    with pytest.raises(ValueError, match="another recipe.*task_grating"):
        build(tasks, cache_dir=tmp_path, recipe=tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=1, task_colour_mix=0.25))


def test_pretraining_runs_on_the_recipes_threads_whatever_the_builds(tmp_path, monkeypatch):
    """The pretrained weights depend on the thread count (float reduction order), so the recipe
    fixes it: a build on one thread pretrains on ``pretrain_threads`` and restores its own."""
    from fusion_bench_larv.synth import model as M

    seen, pretrain = [], M.pretrain

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return pretrain(*args, **kwargs)

    monkeypatch.setattr(M, "pretrain", spy)
    previous = torch.get_num_threads()
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=1, pretrain_threads=2)
    assets = build(["shapes"], cache_dir=tmp_path, recipe=recipe, threads=1)
    assert seen == [2] and torch.get_num_threads() == previous
    assert assets.read_manifest()["recipe"]["pretrain_threads"] == 2
    with pytest.raises(ValueError, match="`pretrain_threads` must be >= 1, got 0"):
        Recipe(pretrain_threads=0)


def test_build_cli_refuses_bad_values_before_writing(tmp_path, capsys):
    from fusion_bench_larv.synth.__main__ import main

    assert main(["build", "--cache-dir", str(tmp_path / "c"), "--task-grating", "-3"]) == 2
    assert "build: error: `task_grating` must be >= 0, got -3.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", "--cache-dir", str(tmp_path / "c"), "--jobs", "0"])
    assert "argument --jobs: must be a whole number >= 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_label_weight_needs_labels_and_is_validated(tiny_synth):
    """The supervised pretraining term needs each image's task and label; weights are >= 0."""
    from transformers import CLIPModel, CLIPProcessor

    with pytest.raises(ValueError, match="pretrain_label_weight"):
        Recipe(pretrain_label_weight=-1.0)
    clip = CLIPModel.from_pretrained(str(tiny_synth.assets.pretrained))
    processor = CLIPProcessor.from_pretrained(str(tiny_synth.assets.pretrained))
    images, labels = generate("shapes", "test", 4, seed=0)
    with pytest.raises(ValueError, match="task_ids, labels and num_classes"):
        model_mod.pretrain(clip, processor, images, ["a shape"] * 4, steps=1, batch_size=2, lr=1e-3,
                           weight_decay=0.0, seed=0, labels=labels, label_weight=1.0)
    # with them, the first step's loss is the contrastive loss plus the (positive) cross-entropy
    import copy

    kw = dict(steps=1, batch_size=4, lr=1e-3, weight_decay=0.0, seed=0)
    plain = model_mod.pretrain(copy.deepcopy(clip), processor, images, ["a shape"] * 4, **kw)
    torch.manual_seed(0)
    supervised = model_mod.pretrain(copy.deepcopy(clip), processor, images, ["a shape"] * 4, **kw,
                                    task_ids=np.zeros(4, dtype=int), labels=labels, num_classes=[6],
                                    label_weight=1.0)
    assert np.isfinite(supervised[0]) and supervised[0] > plain[0] + 0.1, (plain, supervised)


def test_recipe_mismatch_and_missing_assets_are_clear(tmp_path):
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=1)
    build(["shapes"], cache_dir=tmp_path, recipe=recipe)
    with pytest.raises(ValueError, match="another recipe.*finetune_steps"):
        build(["shapes"], cache_dir=tmp_path, recipe=tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=5))
    with pytest.raises(ValueError, match="not in this recipe's suite"):
        build(["textures"], cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python -m fusion_bench_larv.synth build --tasks 8"):
        ensure(["shapes"], cache_dir=tmp_path / "empty", build_if_missing=False)
    with pytest.raises(ValueError, match="suite"):
        Recipe(suite=0)


def test_folder_of_another_generator_version_is_refused(tmp_path):
    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=1)
    assets = build(["shapes"], cache_dir=tmp_path, recipe=recipe)
    manifest = assets.read_manifest()
    assert manifest["version"] == build_mod.MANIFEST_VERSION
    manifest["version"] = build_mod.MANIFEST_VERSION - 1
    assets.manifest.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"version {build_mod.MANIFEST_VERSION - 1} of the tinyclip_synth generator"):
        ensure(["shapes"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"delete that folder or use another cache \(--cache-dir, modelpool.cache_dir"):
        build(["shapes"], cache_dir=tmp_path, recipe=recipe)


def test_pool_builds_missing_artefact_or_names_the_command(tmp_path):
    from fusion_bench_larv.synth.pools import SynthCLIPVisionModelPool

    recipe = tiny_recipe(layers=2, suite=2, pretrain_steps=2, finetune_steps=1)
    tasks = list(TASK_NAMES[:2])
    assets = build(tasks, cache_dir=tmp_path, recipe=recipe)
    shutil.rmtree(assets.finetuned(tasks[1]))
    with pytest.raises(FileNotFoundError, match=f"finetuned/{tasks[1]}.*python -m fusion_bench_larv.synth build"):
        SynthCLIPVisionModelPool(tasks, cache_dir=str(tmp_path), build_if_missing=False)
    pool = SynthCLIPVisionModelPool(tasks, cache_dir=str(tmp_path))  # rebuilt with the manifest's recipe
    assert assets.missing(tasks) == [] and pool.model_names == tasks


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSION_BENCH_LARV_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("FUSION_BENCH_LARV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "fusion_bench_larv"
    assert Assets(None, seed=3).root == tmp_path / "xdg" / "fusion_bench_larv" / "tinyclip_synth_seed3"


def test_pools_point_at_assets(tiny_synth):
    from fusion_bench_larv.synth.pools import SynthCLIPTaskPool, SynthCLIPVisionModelPool

    pool = SynthCLIPVisionModelPool(tiny_synth.tasks, cache_dir=str(tiny_synth.cache_dir), build_if_missing=False)
    assert pool.model_names == tiny_synth.tasks and pool.has_pretrained
    assert pool.load_processor().tokenizer is not None
    single = SynthCLIPVisionModelPool(tiny_synth.tasks, cache_dir=str(tiny_synth.cache_dir), individual="digits")
    assert single.all_model_names == ["_pretrained_"]
    taskpool = SynthCLIPTaskPool(tiny_synth.tasks, cache_dir=str(tiny_synth.cache_dir), build_if_missing=False)
    names, templates = taskpool.get_classnames_and_templates("digits")
    assert names == [str(d) for d in range(10)] and templates[0]("3") == 'a photo of the number: "3".'


# --- configs ------------------------------------------------------------------------------
def _compose(overrides):
    import fusion_bench_config

    # a namespace package: no __file__
    return compose_config(list(fusion_bench_config.__path__)[0], overrides)


@pytest.mark.parametrize("n", [8, 14, 20])
def test_modelpool_configs_select_their_taskpool(n):
    cfg = _compose([f"modelpool=tinyclip_synth{n}"])
    assert cfg.modelpool._target_ == "fusion_bench_larv.synth.pools.SynthCLIPVisionModelPool"
    assert list(cfg.modelpool.tasks) == list(SUITES[n])
    assert cfg.taskpool._target_ == "fusion_bench_larv.synth.pools.SynthCLIPTaskPool"
    assert list(cfg.taskpool.tasks) == list(SUITES[n])
    assert cfg.taskpool.dataloader_kwargs.num_workers == 0 and cfg.taskpool.dataloader_kwargs.pin_memory is False
    explicit = _compose([f"modelpool=tinyclip_synth{n}", "taskpool=dummy"])
    assert explicit.taskpool._target_ == "fusion_bench.taskpool.DummyTaskPool"


def test_cli_cfg_job_shows_pool_and_taskpool(tmp_path):
    proc = subprocess.run(
        [*fusion_bench_executable(), "--cfg", "job", "modelpool=tinyclip_synth8", "modelpool.cache_dir=/somewhere"],
        cwd=tmp_path,
        env={**__import__("os").environ, **OFFLINE_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["modelpool"]["tasks"] == list(SUITES[8])
    assert cfg["taskpool"]["tasks"] == list(SUITES[8])
    assert cfg["taskpool"]["cache_dir"] == "${oc.select:modelpool.cache_dir,null}"
    assert not (tmp_path / "outputs").exists()


def test_task_vector_stats_of_a_build(tiny_synth):
    """`python -m fusion_bench_larv.synth stats`: per-task relative norms, cosines, one depth entry per block."""
    from fusion_bench_larv.synth.stats import assets_stats, format_stats

    stats = assets_stats(tiny_synth.assets, tiny_synth.tasks)
    assert list(stats["rel_norm"]) == tiny_synth.tasks and all(v > 0 for v in stats["rel_norm"].values())
    assert -1 < stats["mean_cos"] < 1
    assert len(stats["depth"]) == tiny_synth.recipe.model.vision_layers and all(v > 0 for v in stats["depth"])
    assert "mean pairwise cosine" in format_stats(stats)
