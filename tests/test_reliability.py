"""Faults around the shared state: concurrent first use, damaged caches, killed builds, folder
modes, a full disk, a locked sweep folder (issue 26). Every case ends in a correct result or a
clear error, never a silent wrong one."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import OFFLINE_ENV, fusion_bench_executable, tiny_recipe
from fusion_bench_larv import atomic
from fusion_bench_larv.runs import summary, sweep
from fusion_bench_larv.atomic import atomic_dir, atomic_write_json
from fusion_bench_larv.synth import build as build_mod, datasets as datasets_mod
from fusion_bench_larv.synth import digests
from fusion_bench_larv.synth.build import Assets, build, ensure, new_manifest
from fusion_bench_larv.synth.tasks import TASK_NAMES

TASKS = list(TASK_NAMES[:2])
RECIPE = tiny_recipe(layers=2, suite=2, pretrain_steps=3, finetune_steps=2)
ENV = {**os.environ, **OFFLINE_ENV}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Assets:
    """An uninterrupted build of RECIPE: the reference every other build must equal."""
    return build(TASKS, cache_dir=tmp_path_factory.mktemp("clean"), recipe=RECIPE)


def copy_of(clean: Assets, dest: Path) -> Assets:
    shutil.copytree(clean.cache_dir, dest)
    return Assets(dest, clean.seed)


def tree(assets: Assets) -> dict:
    """``{relative path: bytes}`` of every artefact file (not the manifest, which holds timings)."""
    return {str(p.relative_to(assets.root)): p.read_bytes() for p in sorted(assets.root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def recorded(assets: Assets) -> dict:
    return {name: rec["sha256"] for name, rec in assets.read_manifest()["digests"].items()}


def assert_same_as(assets: Assets, clean: Assets) -> None:
    assert tree(assets) == tree(clean)
    assert recorded(assets) == recorded(clean)
    assert not [p for p in assets.root.rglob(".*")], "temporary files left behind"


def flip_tensor_bytes(path: Path, n: int = 200) -> None:
    """Change the lowest mantissa byte of ``n`` float32 values in a safetensors file's data:
    the header stays intact and every value stays finite."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    for k in range(n):
        data[start + 4 * k] ^= 0x01
    path.write_bytes(bytes(data))


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- the build lock -------------------------------------------------------------------------
HOLD_LOCK = ("import fcntl, os, sys, time\n"
             "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); f.write(str(os.getpid()))\n"
             "f.flush(); print('locked', flush=True); time.sleep(60)")


def test_a_build_waits_for_the_one_in_progress_and_a_killed_one_blocks_nothing(tmp_path, caplog):
    assets = Assets(tmp_path, 0)
    assets.cache_dir.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(assets.lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        killer = threading.Timer(1.0, holder.send_signal, [signal.SIGKILL])  # a build killed mid-way
        killer.start()
        start = time.monotonic()
        with caplog.at_level("INFO", logger=build_mod.__name__):
            build(["shapes"], cache_dir=tmp_path, recipe=RECIPE)
        assert time.monotonic() - start >= 0.9  # it waited, and no longer than its holder lived
        killer.join()
    finally:
        holder.kill()
        holder.wait()
    assert f"another process is building {assets.root} (pid {holder.pid} holds {assets.lock_file}); waiting" in caplog.text
    assert assets.missing(["shapes"]) == []


def test_a_cache_folder_that_cannot_be_written_is_a_clear_error(tmp_path):
    assets = Assets(tmp_path, 0)
    assets.lock_file.mkdir(parents=True)  # stands in for a read-only folder (the tests may run as root)
    with pytest.raises(PermissionError, match=rf"cannot build the tinyclip_synth assets in {assets.root}: .* is not writable"):
        build(["shapes"], cache_dir=tmp_path, recipe=RECIPE)


def test_a_complete_verified_cache_is_used_without_writing(clean, monkeypatch):
    ensure(TASKS, cache_dir=clean.cache_dir)  # verified once in this process

    def forbidden(self):
        raise AssertionError("a complete cache must not be locked or written")

    monkeypatch.setattr(Assets, "lock", forbidden)
    monkeypatch.setattr(digests, "sha256_file", lambda path: pytest.fail("verified twice in one process"))
    ensure(TASKS, cache_dir=clean.cache_dir)
    ensure(TASKS, cache_dir=clean.cache_dir, finetuned=False)


# --- verified artefacts ------------------------------------------------------------------------
def test_every_artefact_has_a_digest_of_every_file(clean):
    records = clean.read_manifest()["digests"]
    assert sorted(records) == sorted(clean.artefacts(TASKS))
    assert set(records["data/shapes"]["files"]) == {f"{split}/{f}" for split in ("train", "val", "test")
                                                    for f in ("data-00000-of-00001.arrow", "dataset_info.json", "state.json")}
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "vocab.json"} <= set(records["pretrained"]["files"])
    assert set(records["prompts"]["files"]) == {"prompts.json"}
    for name, record in records.items():
        assert record == digests.artefact_record(clean.path(name)), name


def test_a_damaged_tower_and_dataset_are_rebuilt_with_a_warning_or_refused(clean, tmp_path, caplog):
    from fusion_bench_larv.synth.pools import SynthCLIPTaskPool, SynthCLIPVisionModelPool

    assets = copy_of(clean, tmp_path / "cache")
    tower = assets.finetuned("shapes") / "model.safetensors"
    arrow = assets.data("colors", "test") / "data-00000-of-00001.arrow"
    flip_tensor_bytes(tower)
    flip_middle_byte(arrow)
    cache = str(assets.cache_dir)
    with pytest.raises(ValueError, match=rf"damaged in .*{re.escape(str(tower))} does not match the SHA-256 recorded "
                                         r"when finetuned/shapes was built.*Rebuild them with: python -m fusion_bench_larv"):
        SynthCLIPVisionModelPool(TASKS, cache_dir=cache, build_if_missing=False)
    with pytest.raises(ValueError, match=re.escape(str(arrow))):
        SynthCLIPTaskPool(TASKS, cache_dir=cache, build_if_missing=False)
    assert tree(assets) != tree(clean)  # refusing changes nothing

    with caplog.at_level("WARNING"):
        SynthCLIPVisionModelPool(TASKS, cache_dir=cache)
        SynthCLIPTaskPool(TASKS, cache_dir=cache)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sorted(warnings) == sorted([
        f"tinyclip_synth: {arrow} does not match the SHA-256 recorded when data/colors was built (a damaged file); "
        "rebuilding data/colors",
        f"tinyclip_synth: {tower} does not match the SHA-256 recorded when finetuned/shapes was built (a damaged file); "
        "rebuilding finetuned/shapes",
    ])
    assert_same_as(assets, clean)


def test_other_faults_of_a_cache_folder(clean, tmp_path, caplog):
    assets = copy_of(clean, tmp_path / "cache")
    # a truncated file, a missing file, an unexpected file: each rebuilt, with the file named
    assets.prompts.write_text(assets.prompts.read_text()[:50])
    (assets.finetuned("colors") / "config.json").unlink()
    (assets.pretrained / "notes.txt").write_text("not part of the build")
    with caplog.at_level("WARNING", logger=build_mod.__name__):
        ensure(TASKS, cache_dir=assets.cache_dir)
    text = caplog.text
    assert f"{assets.prompts} does not match the SHA-256 recorded when prompts was built" in text
    assert f"{assets.finetuned('colors') / 'config.json'} is missing from finetuned/colors" in text
    assert f"{assets.pretrained / 'notes.txt'} was not in pretrained when it was built (an unexpected file)" in text
    assert_same_as(assets, clean)

    # a cache from before digests were kept: recorded on first use, checked from then on
    manifest = assets.read_manifest()
    del manifest["digests"]
    atomic_write_json(assets.manifest, manifest)
    caplog.clear()
    with caplog.at_level("INFO", logger=build_mod.__name__):
        ensure(TASKS, cache_dir=assets.cache_dir)
    assert "recorded the digests of prompts; data (2): shapes, colors; pretrained; finetuned (2)" in caplog.text
    assert recorded(assets) == recorded(clean)

    # a damaged manifest cannot be checked: a clear error, nothing rebuilt
    assets.manifest.write_text(assets.manifest.read_text()[:-20])
    with pytest.raises(ValueError, match=rf"{assets.manifest} cannot be read .*delete {assets.root}"):
        ensure(TASKS, cache_dir=assets.cache_dir)


def test_a_full_disk_during_a_build_is_an_error_and_the_rerun_completes(clean, tmp_path, monkeypatch):
    real = datasets_mod.save_dataset
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # mid-way through the second dataset (3 splits each): the first one is in place
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets_mod, "save_dataset", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        build(TASKS, cache_dir=tmp_path, recipe=RECIPE)
    assets = Assets(tmp_path, 0)
    assert assets.missing(TASKS) == ["data/colors", "pretrained", "finetuned/shapes", "finetuned/colors"]
    assert not list(assets.root.rglob(".*")), "a failed write left its temporary folder"
    monkeypatch.undo()
    build(TASKS, cache_dir=tmp_path, recipe=RECIPE)
    assert_same_as(assets, clean)


# --- killed builds -------------------------------------------------------------------------
KILLED_BUILD = """
import json, os, signal, sys
from fusion_bench_larv.synth import build as B, datasets as D, model as M
from fusion_bench_larv.synth.build import Recipe

cache, stage, recipe = sys.argv[1], sys.argv[2], Recipe(**json.loads(sys.argv[3]))
calls = []

def dying(real, at):
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper

if stage == "datasets":      # the second task's dataset, before its first split is written
    D.save_dataset = dying(D.save_dataset, 4)
elif stage == "pretraining":  # the tokenizer is written into the temporary folder, the model not yet
    M.pretrain = dying(M.pretrain, 1)
elif stage == "tower":        # the first tower is in place, the second is being fine-tuned
    M.finetune = dying(M.finetune, 2)
B.build(json.loads(sys.argv[4]), cache_dir=cache, recipe=recipe)
"""


@pytest.mark.parametrize("stage", ["datasets", "pretraining", "tower"])
def test_a_build_killed_at_any_stage_resumes_to_the_clean_builds_artefacts(clean, tmp_path, stage, caplog):
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(tmp_path), stage, json.dumps(RECIPE.to_dict()),
                           json.dumps(TASKS)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assets = Assets(tmp_path, 0)
    left = {"datasets": "data/colors", "pretraining": "pretrained", "tower": "finetuned/colors"}[stage]
    assert left in assets.missing(TASKS)
    if stage != "tower":
        assert list(assets.root.rglob(".*.tmp")), "the kill should have left a temporary folder"
    with caplog.at_level("INFO", logger=build_mod.__name__):
        build(TASKS, cache_dir=tmp_path)  # the recipe is read from the manifest
    assert re.search(rf"building \d+ artefact\(s\) in {assets.root}: .*{re.escape(build_mod.describe_artefacts([left]))}", caplog.text)
    assert_same_as(assets, clean)


# --- folder modes ----------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o002, 0o775), (0o077, 0o700)])
def test_atomic_folders_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "artefact") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "private").touch(mode=0o600)  # as safetensors writes its files
            assert tmp.stat().st_mode & 0o777 == mode
        atomic.atomic_write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "artefact").stat().st_mode & 0o777 == mode
    assert (tmp_path / "artefact" / "sub").stat().st_mode & 0o777 == mode
    assert (tmp_path / "artefact" / "sub" / "private").stat().st_mode & 0o777 == mode & 0o666
    assert (tmp_path / "file.txt").stat().st_mode & 0o777 == mode & 0o666


def test_a_build_under_umask_022_gives_0755_folders_and_0644_files(tmp_path):
    old = os.umask(0o022)
    try:
        assets = build(TASKS, cache_dir=tmp_path / "cache", recipe=RECIPE)
    finally:
        os.umask(old)
    paths = [assets.cache_dir, *assets.cache_dir.rglob("*")]  # safetensors writes 0600 itself
    assert {oct(p.stat().st_mode & 0o777) for p in paths if p.is_dir()} == {oct(0o755)}
    assert {oct(p.stat().st_mode & 0o777) for p in paths if p.is_file()} == {oct(0o644)}
    assert assets.lock_file in paths


# --- sweeps ----------------------------------------------------------------------------------
def test_a_second_sweep_into_a_folder_in_use_stops_before_any_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(sweep_dir / sweep.SWEEP_LOCK)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
        with pytest.raises(RuntimeError, match=rf"another sweep \(pid {holder.pid}\) is writing {sweep_dir}"):
            sweep.LARVSweepCallback().on_multirun_start(config)
    finally:
        holder.kill()
        holder.wait()
    callback = sweep.LARVSweepCallback()
    callback.on_multirun_start(config)  # the holder is gone, and its lock with it
    callback.on_multirun_end(config)


def test_a_damaged_job_record_is_a_row_that_says_so(tmp_path):
    for num, text in ((0, json.dumps({"job_num": 0, "status": "failed", "overrides": ["method.eta=1"],
                                      "error": "ValueError: x"})), (1, '{"job_num": 1, "stat')):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / summary.JOB_RECORD).write_text(text)
    rows = summary.write_sweep_summary(tmp_path)["rows"]
    assert [(r["job"], r["status"]) for r in rows] == [(0, "failed"), (1, "unreadable record")]
    assert rows[1]["error"] == f"{tmp_path / '1' / summary.JOB_RECORD} cannot be read as a job record"


@pytest.mark.slow
def test_a_joblib_multirun_on_an_empty_cache_builds_once(tmp_path):
    """4 jobs start together on a cache that holds only a manifest (the tiny recipe, nothing
    built): one builds, the others wait for it; the reports equal those of a serial sweep."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cache = tmp_path / "cache"
    atomic_write_json(Assets(cache, 0).manifest, new_manifest(RECIPE))
    tasks = "[" + ",".join(TASKS) + "]"
    common = ["-m", "modelpool=tinyclip_synth8", f"modelpool.tasks={tasks}", f"taskpool.tasks={tasks}",
              f"modelpool.cache_dir={cache}", "taskpool.dataloader_kwargs.batch_size=64",
              "method=task_arithmetic", "method.scaling_factor=0.1,0.2,0.3,0.4", "print_config=false"]
    reports, logs = {}, {}
    for name, launcher in (("parallel", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]), ("serial", [])):
        sweep_dir = tmp_path / name
        proc = subprocess.run([*fusion_bench_executable(), *common, *launcher, f"hydra.sweep.dir={sweep_dir}"],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        logs[name] = proc.stdout + proc.stderr + "".join(p.read_text() for p in sweep_dir.rglob("*.log"))
        reports[name] = {job: json.loads((sweep_dir / str(job) / "program_report.json").read_text()) for job in range(4)}
    # one process built, the other jobs said they waited for it
    builds = re.findall(r"building \d+ artefact\(s\) in (\S+):", logs["parallel"])
    assert builds == [str(Assets(cache, 0).root)], builds
    assert "Directory not empty" not in logs["parallel"]
    assert not re.search(r"building \d+ artefact", logs["serial"])
    for job in range(4):
        parallel, serial = reports["parallel"][job], reports["serial"][job]
        for key in [*TASKS, "average"]:
            assert parallel[key]["accuracy"] == serial[key]["accuracy"], (job, key)
            # loky workers limit their threads: float sums may round differently
            assert parallel[key]["loss"] == pytest.approx(serial[key]["loss"], rel=1e-5), (job, key)
