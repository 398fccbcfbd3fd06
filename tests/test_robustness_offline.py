"""Corruption robustness and unseen-task generalization on the embedded benchmark.

- the seven corruptions (``synth/corruptions.py``): deterministic for a seed, change the image,
  keep shape and dtype, leave their input alone; hand-checked formulas;
- the corrupted splits in the cache (``synth/corrupted.py``): generated from the clean test split,
  the same bytes when regenerated, refused when they do not match their record;
- the pools: the right towers, tasks and splits (``modelpool=tinyclip_synth8_robustness``,
  ``tinyclip_synth8_generalization_exp{1,2}``), composed through Hydra;
- ``reproduce-larv robustness|generalization --suite tinyclip``: the job grids (dry run), tables
  and figures from hand-written job folders, and a down-sized end-to-end run of each on the
  tests' tiny build (``tests/conftest.py::tiny_synth``).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from importlib.util import find_spec

import numpy as np
import pytest

from conftest import compose_config
from fusion_bench_larv.paper import labels, reproduce, tables
from fusion_bench_larv.paper.experiments import CLEAN
from fusion_bench_larv.paper.experiments import CORRUPTIONS as PAPER_CORRUPTIONS
from fusion_bench_larv.synth import corrupted, corruptions
from fusion_bench_larv.synth.tasks import SUITES, generate
from test_reproduce import dry_run, harness_args
from test_tables import bare_overrides, larv_record, write_job

RANDOM = {"gaussian_noise", "impulse_noise", "motion_blur", "spatter"}  # the types that draw from rng


@pytest.fixture(scope="module")
def images():
    x, _ = generate("shapes", "test", 6, 0)
    return x


# ---------------------------------------------------------------------------------------------
# the corruptions
# ---------------------------------------------------------------------------------------------


def test_the_seven_types_are_fusionbenchs():
    assert set(corruptions.CORRUPTIONS) == set(PAPER_CORRUPTIONS) == set(corruptions.SEVERITY)
    assert len(corruptions.CORRUPTIONS) == 7
    assert CLEAN == corrupted.CLEAN  # the lab names the clean split without importing the generator


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_corruption_deterministic_changes_image_keeps_shape_and_dtype(images, name):
    before = images.copy()
    out = corruptions.corrupt(images, name, np.random.default_rng(1))
    again = corruptions.corrupt(images, name, np.random.default_rng(1))
    assert np.array_equal(images, before), "the input was modified"
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out, again), "not deterministic for a seed"
    changed = (out != images).any(axis=(1, 2, 3))
    assert changed.all(), f"{name} left {int((~changed).sum())} image(s) unchanged"
    other = corruptions.corrupt(images, name, np.random.default_rng(2))
    assert (not np.array_equal(out, other)) == (name in RANDOM)


def test_corruption_formulas_by_hand():
    rng = np.random.default_rng(0)
    x = np.zeros((1, 4, 4, 3), np.uint8)
    x[0, :2] = 200  # half the image at 200, half at 0: per-channel mean 100
    out = corruptions.contrast(x, rng, factor=0.5)
    assert set(np.unique(out[0, :2])) == {150} and set(np.unique(out[0, 2:])) == {50}
    big = np.full((4, 64, 64, 3), 128, np.uint8)
    noisy = corruptions.gaussian_noise(big, rng, sigma=0.1) / 255.0 - 128 / 255
    assert abs(noisy.std() - 0.1) < 0.005 and abs(noisy.mean()) < 0.005
    speckled = corruptions.impulse_noise(big, rng, amount=0.2)
    assert abs((speckled == 0).mean() - 0.1) < 0.01 and abs((speckled == 255).mean() - 0.1) < 0.01
    assert ((speckled == 0) | (speckled == 255) | (speckled == 128)).all()
    blocks = corruptions.pixelate(np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3), rng, factor=0.5)
    assert (blocks[0, 0, 0] == blocks[0, 1, 1]).all() and (blocks[0, 2, 2] == blocks[0, 3, 3]).all()
    # motion blur of a flat image is the image; spatter at opacity 0 is the image
    flat = np.full((2, 8, 8, 3), 77, np.uint8)
    assert np.array_equal(corruptions.motion_blur(flat, rng, length=3, sigma=1.0), flat)
    assert np.array_equal(corruptions.spatter(big, rng, sigma=1.5, threshold=1.0, soften=0.7, opacity=0.0), big)


def test_corruption_refuses_bad_input(images):
    with pytest.raises(ValueError, match="corruption: expected one of"):
        corruptions.corrupt(images, "fog", np.random.default_rng(0))
    with pytest.raises(TypeError, match="uint8"):
        corruptions.corrupt(images.astype(np.float32), "contrast", np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# the corrupted splits in the cache
# ---------------------------------------------------------------------------------------------


def test_corrupted_split_built_from_the_clean_test_split_and_checked(tiny_synth, tmp_path):
    import datasets

    assets = tiny_synth.assets
    shutil.rmtree(assets.root / "corrupted", ignore_errors=True)
    (path,) = corrupted.ensure_corrupted(assets, ["shapes"], "spatter").values()
    assert path == assets.root / "corrupted" / "shapes" / "spatter"
    record = json.loads((path / corrupted.RECORD).read_text())
    assert record["severity"] == dict(corruptions.SEVERITY["spatter"]) and record["seed"] == 0
    clean = datasets.load_from_disk(str(assets.data("shapes", "test")))
    bad = datasets.load_from_disk(str(path))
    assert bad["label"] == clean["label"] and bad.features == clean.features
    assert any(np.asarray(a).tobytes() != np.asarray(b).tobytes() for a, b in zip(bad["image"], clean["image"]))
    # regenerated: the same bytes
    shutil.rmtree(path)
    corrupted.ensure_corrupted(assets, ["shapes"], "spatter")
    assert json.loads((path / corrupted.RECORD).read_text())["sha256"] == record["sha256"]
    # a split made at another severity, or whose data changed, is refused naming the folder
    (path / corrupted.RECORD).write_text(json.dumps({**record, "severity": {"sigma": 9}}))
    with pytest.raises(ValueError, match="delete that folder") as e:
        corrupted.ensure_corrupted(assets, ["shapes"], "spatter")
    assert "severity" in str(e.value) and str(path) in str(e.value)
    (path / corrupted.RECORD).write_text(json.dumps({**record, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="sha256"):
        corrupted.check(assets, "shapes", "spatter")
    shutil.rmtree(path)
    with pytest.raises(ValueError, match="expected 'clean' or one of"):
        corrupted.ensure_corrupted(assets, ["shapes"], "fog")


def test_task_pool_evaluates_the_named_split(tiny_synth):
    from fusion_bench_larv.synth.pools import SynthCLIPTaskPool

    kw = dict(cache_dir=str(tiny_synth.cache_dir), build_if_missing=False)
    for corruption in (None, "clean"):
        pool = SynthCLIPTaskPool(["shapes", "colors"], corruption=corruption, **kw)
        assert pool._test_datasets["colors"]["dataset_path"] == str(tiny_synth.assets.data("colors", "test"))
    pool = SynthCLIPTaskPool(["shapes", "colors"], corruption="pixelate", **kw)
    assert pool._test_datasets["colors"]["dataset_path"] == str(corrupted.corrupted_dir(tiny_synth.assets, "colors", "pixelate"))


# ---------------------------------------------------------------------------------------------
# the pools, composed as fusion_bench composes them
# ---------------------------------------------------------------------------------------------


def _compose(*overrides):
    return compose_config(list(find_spec("fusion_bench_config").submodule_search_locations)[0], list(overrides))


@pytest.mark.parametrize("corruption", ["clean", "jpeg_compression", None])
def test_robustness_pool_has_the_four_towers_and_the_named_split(corruption):
    cfg = _compose("modelpool=tinyclip_synth8_robustness", *([f"+corruption={corruption}"] if corruption else []))
    assert tuple(cfg.modelpool.tasks) == corrupted.ROBUSTNESS_TASKS == tuple(cfg.taskpool.tasks)
    assert cfg.taskpool._target_ == "fusion_bench_larv.synth.pools.SynthCLIPTaskPool"
    assert cfg.taskpool.corruption == corruption
    assert set(corrupted.ROBUSTNESS_TASKS) <= set(SUITES[8])


@pytest.mark.parametrize("exp", ["exp1", "exp2"])
def test_generalization_pools_merge_six_and_evaluate_all_eight(exp):
    cfg = _compose(f"modelpool=tinyclip_synth8_generalization_{exp}")
    merged, evaluated = list(cfg.modelpool.tasks), list(cfg.taskpool.tasks)
    assert len(merged) == 6 and evaluated == list(SUITES[8])
    unseen = {labels.norm_task(t) for t in evaluated if t not in merged}
    assert unseen == labels.TINYCLIP_GENERALIZATION_UNSEEN[exp] and len(unseen) == 2
    assert all(labels.generalization_seen("TinyCLIP", exp, t) == (t in merged) for t in evaluated)


# ---------------------------------------------------------------------------------------------
# reproduce-larv: the job grids
# ---------------------------------------------------------------------------------------------


def test_tinyclip_robustness_grid(capsys):
    _, jobs = dry_run(capsys, "robustness", "--suite", "tinyclip")
    assert len(jobs) == 8 * 6 * 2
    assert {j["modelpool"] for j in jobs} == {"tinyclip_synth8_robustness"} and not any("taskpool" in j for j in jobs)
    assert Counter(j["+corruption"] for j in jobs) == {c: 12 for c in ("clean", *PAPER_CORRUPTIONS)}
    _, jobs = dry_run(capsys, "robustness", "--suite", "tinyclip", "--references", "--mergers", "iso_c")
    refs = [j for j in jobs if j["method"] == "dummy"]
    assert len(jobs) == 8 * (2 + 1 + 4) and len(refs) == 8 * 5
    assert Counter(j.get("modelpool.individual") for j in refs) == {None: 8, **{t: 8 for t in corrupted.ROBUSTNESS_TASKS}}
    with pytest.raises(SystemExit):
        reproduce.main(["robustness", "--references", "--dry-run"])
    with pytest.raises(SystemExit):
        reproduce.main(["robustness", "--corruptions", "clean", "--dry-run"])


def test_tinyclip_generalization_grid(capsys):
    _, jobs = dry_run(capsys, "generalization", "--suite", "tinyclip")
    assert len(jobs) == 2 * 6 * 2
    assert Counter(j["modelpool"] for j in jobs) == {"tinyclip_synth8_generalization_exp1": 12,
                                                     "tinyclip_synth8_generalization_exp2": 12}


# ---------------------------------------------------------------------------------------------
# tables and figures from hand-written job folders (every number known)
# ---------------------------------------------------------------------------------------------

TASKS4 = list(corrupted.ROBUSTNESS_TASKS)
POOL = "tinyclip_synth8_robustness"


def section(out, title):
    """The Markdown of the table of ``<out>/tables.md`` whose title starts with ``title``."""
    return next(b for b in (out / "tables.md").read_text().split("### ") if b.startswith(title))


def _acc(split, task, offset):
    return round(0.5 + 0.02 * TASKS4.index(task) - (0.0 if split == "clean" else 0.1) + offset, 4)


@pytest.fixture
def robustness_tree(tmp_path):
    root = tmp_path / "runs"
    for split in ("clean", "contrast", "motion_blur"):
        extra = {"corruption": split}
        ov = [f"+corruption={split}"]
        write_job(root, POOL, "task_arithmetic", bare_overrides("task_arithmetic") + ov,
                  {t: _acc(split, t, 0.0) for t in TASKS4}, extra=extra)
        write_job(root, POOL, "larv_task_arithmetic", ov, {t: _acc(split, t, 0.01 * TASKS4.index(t)) for t in TASKS4},
                  larv=larv_record(), extra=extra)
        write_job(root, POOL, "dummy", ov, {t: 0.3 for t in TASKS4}, extra=extra)
        for t in TASKS4:
            write_job(root, POOL, "dummy", ov + [f"modelpool.individual={t}"],
                      {u: (0.9 if u == t else 0.2) - (0.0 if split == "clean" else 0.2) for u in TASKS4}, extra=extra)
    return root


def test_robustness_table_and_figures(robustness_tree, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    result = tables.make_tables(robustness_tree, tmp_path / "out")
    assert {"fig_corruption", "fig_corruption_delta"} <= set(result["figures"])
    assert "fig_diagnostics" not in result["figures"]  # Figure 2 is the CLIP task settings' merges only
    rob = section(tmp_path / "out", "Corruption robustness, TinyCLIP")
    assert "| Method | Clean | Motion | Contrast | Avg. |" in rob
    assert "| Pretrained (zero-shot) | 30.0 | 30.0 | 30.0 | 30.0 |" in rob
    assert "| Individual fine-tuned | 90.0 | 70.0 | 70.0 | 70.0 |" in rob
    assert "| Task Arithmetic | 53.0 | 43.0 | 43.0 | 43.0 |" in rob  # mean of 0.50, 0.52, 0.54, 0.56
    assert "| + LARV | 54.5 (+1.5) | 44.5 (+1.5) | 44.5 (+1.5) | 44.5 (+1.5) |" in rob
    rows = tables.tidy_rows(tables.collect(robustness_tree))
    (ax,) = tables.corruption_figure(rows).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Clean", "Motion", "Contrast", "Avg."]
    assert [p.get_height() for p in ax.containers[1]] == pytest.approx([54.5, 44.5, 44.5, 44.5])
    fig = tables.corruption_delta_figure(rows)
    grid = np.asarray(fig.axes[0].images[0].get_array())
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == TASKS4 + ["Avg."]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Motion", "Contrast", "Avg."]
    # rows: Δ of each task (0, 1, 2, 3 points), then their mean; the same on every corruption
    assert grid == pytest.approx(np.array([[d] * 3 for d in (0.0, 1.0, 2.0, 3.0, 1.5)]), abs=1e-6)
    norm = fig.axes[0].images[0].norm
    assert norm.vcenter == 0 and norm.vmin == -norm.vmax


def test_generalization_table_splits_seen_and_unseen(tmp_path):
    root = tmp_path / "runs"
    tasks8 = list(SUITES[8])
    for exp in ("exp1", "exp2"):
        accs = {t: (0.8 if labels.generalization_seen("TinyCLIP", exp, t) else 0.4) for t in tasks8}
        write_job(root, f"tinyclip_synth8_generalization_{exp}", "iso_c", bare_overrides("iso_c"), accs)
        write_job(root, f"tinyclip_synth8_generalization_{exp}", "larv_iso_c", [],
                  {t: a + 0.05 for t, a in accs.items()}, larv=larv_record())
    write_job(root, "tinyclip_synth8", "dummy", [], {t: (0.1 if t in ("digits", "textures") else 0.3) for t in tasks8})
    tables.make_tables(root, tmp_path / "out")
    gen = section(tmp_path / "out", "Generalization, TinyCLIP")
    assert "| Method | exp1 seen | exp1 unseen | exp2 seen | exp2 unseen |" in gen
    # zero-shot: exp1 unseen = handwritten_digits (0.3), textures (0.1); exp2 unseen = digits (0.1), position (0.3)
    assert "| Pretrained (zero-shot) | 26.7 | 20.0 | 26.7 | 20.0 |" in gen
    assert "| Iso-C | 80.0 | 40.0 | 80.0 | 40.0 |" in gen
    assert "| + LARV | 85.0 (+5.0) | 45.0 (+5.0) | 85.0 (+5.0) | 45.0 (+5.0) |" in gen


# ---------------------------------------------------------------------------------------------
# end to end, down-sized: reproduce-larv on the tests' tiny build, then make-larv-tables
# ---------------------------------------------------------------------------------------------


def _reports(output):
    return {str(p.parent.relative_to(output)): json.loads(p.read_text()) for p in sorted(output.rglob("program_report.json"))}


@pytest.mark.slow
def test_tinyclip_robustness_end_to_end(tiny_synth, tmp_path, monkeypatch):
    output = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    args = [a.replace(",digits,handwritten_digits", "") for a in harness_args(tiny_synth, output)]  # shapes, colors
    assert reproduce.main(["robustness", "--suite", "tinyclip", "--mergers", "simple_average",
                           "--corruptions", "clean", "contrast", *args]) == 0
    reports = _reports(output)
    assert len(reports) == 2 * 2, sorted(reports)
    for name, report in reports.items():
        assert set(report) == {"shapes", "colors", "average", "model_info"}, name
    result = tables.make_tables(output, tmp_path / "tables")
    assert {"fig_corruption", "fig_corruption_delta"} <= set(result["figures"])
    rows = tables.tidy_rows(tables.collect(output))
    assert {r["corruption"] for r in rows} == {"clean", "contrast"} and {r["kind"] for r in rows} == {"robustness"}
    rob = section(tmp_path / "tables", "Corruption robustness, TinyCLIP")
    for name, report in reports.items():
        assert f"{100 * report['average']['accuracy']:.1f}" in rob, name
    # the two splits are different images: the bare merge's losses differ
    by_split = {r["corruption"]: r for r in rows if r["task"] == "average" and not r["larv"]}
    assert by_split["clean"]["loss"] != by_split["contrast"]["loss"]


@pytest.mark.slow
def test_tinyclip_generalization_end_to_end(tiny_synth, tmp_path, monkeypatch):
    output = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    args = harness_args(tiny_synth, output)
    # the tiny build has 4 tasks: both pools merge shapes, colors and digits here, which is exp1's
    # split (handwritten_digits unseen; textures is not in the tiny build), so only exp1 is checked
    args = [a.replace("modelpool.tasks=[shapes,colors,digits,handwritten_digits]", "modelpool.tasks=[shapes,colors,digits]")
            for a in args]
    assert reproduce.main(["generalization", "--suite", "tinyclip", "--mergers", "simple_average", *args]) == 0
    reports = _reports(output)
    assert len(reports) == 2 * 2, sorted(reports)
    for report in reports.values():
        assert set(tiny_synth.tasks) <= set(report)  # all four evaluated, three merged
    tables.make_tables(output, tmp_path / "tables")
    gen = section(tmp_path / "tables", "Generalization, TinyCLIP")
    exp1 = next(r for n, r in reports.items() if "exp1" in n and "/larv_" not in f"/{n}")
    assert f"| Simple Averaging | {100 * exp1['handwritten_digits']['accuracy']:.1f}" not in gen  # seen avg first
    unseen = 100 * exp1["handwritten_digits"]["accuracy"]
    seen = 100 * np.mean([exp1[t]["accuracy"] for t in ("shapes", "colors", "digits")])
    assert f"| Simple Averaging | {seen:.1f} | {unseen:.1f} |" in gen
