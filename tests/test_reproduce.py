"""reproduce-larv: dry-run commands, sweep grouping, launcher configs, resumable program.

The dry-run tests expand every printed ``fusion_bench --multirun`` command independently (a
Hydra basic-sweeper product over comma-separated values) and compare the resulting jobs with
the experiment's grid, so a grouping bug can neither lose nor add a job. The end-to-end
multirun tests on the embedded benchmark are at the bottom (they need the LARV method configs
and the ``tinyclip`` harness fixture of ``tests/conftest.py``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import compose_config
from fusion_bench_larv.runs import programs, reports as job_reports
from fusion_bench_larv.paper import jobs as paper_jobs
from fusion_bench_larv.paper import reproduce
from fusion_bench_larv.paper.experiments import MERGERS, build_jobs, experiment_args

REPO = Path(__file__).resolve().parents[1]
ALIASES8 = ["clip-vit-base-patch32_TA8", "clip-vit-base-patch16_TA8", "clip-vit-large-patch14_TA8"]


# ---------------------------------------------------------------------------------------------
# helpers: run the CLI in dry-run mode and expand its commands like Hydra's basic sweeper
# ---------------------------------------------------------------------------------------------


def split_top_level(value: str):
    """Split a sweep value on commas outside brackets (``[0.6,1.0],[0.8,1.2]`` → 2 items)."""
    out, depth, cur = [], 0, ""
    for ch in value:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


SWEEPABLE = {"modelpool", "method", "method.tiers", "+corruption", "+individual_task", "modelpool.individual",
             "method.scaling_factor", "method.alpha", "method.lines_beta"}


def expand(cmd):
    """Jobs (dicts of identity overrides) of one printed command."""
    args = shlex.split(cmd)
    assert args[:2] == ["fusion_bench", "--multirun"], cmd
    axes = []
    experiments = [a for a in args if a.startswith("+experiment=")]
    assert len(experiments) == 1, cmd  # every job's job.json names its experiment
    for a in args[2:]:
        k, v = a.split("=", 1)
        if k.startswith("hydra") or k in ("_target_", "path.log_dir", "+experiment"):
            continue
        vals = split_top_level(v) if k in SWEEPABLE else [v]
        axes.append([(k, x) for x in vals])
    return [dict(p) for p in itertools.product(*axes)]


def check_hydra_can_sweep(cmd):
    """Hydra's multirun master config applies fixed overrides to the groups' defaults: a swept
    group must not come with overrides of its sub-keys (a model-pool alias also sets taskpool)."""
    args = [a for a in shlex.split(cmd)[2:] if not a.startswith("hydra")]
    keys = [a.split("=", 1)[0].lstrip("+~") for a in args]
    for a in args:
        k, v = a.split("=", 1)
        if k in ("method", "modelpool", "taskpool") and len(split_top_level(v)) > 1:
            prefixes = ("modelpool.", "taskpool.") if k == "modelpool" else (k + ".",)
            assert not [x for x in keys if x.startswith(prefixes)], cmd


def dry_run(capsys, *argv):
    assert reproduce.main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    commands = [line for line in lines if line.startswith("fusion_bench ")]
    for c in commands:
        check_hydra_can_sweep(c)
    summary = lines[-1]
    jobs = [j for c in commands for j in expand(c)]
    assert summary.startswith("# ") and f"{len(jobs)} jobs in {len(commands)} fusion_bench" in summary
    keys = [tuple(sorted(j.items())) for j in jobs]
    assert len(set(keys)) == len(keys), "a job appears twice"
    return commands, jobs


def variant_of(job):
    m = job["method"]
    for spec in MERGERS.values():
        if m == spec.larv_method:
            return spec.key, "larv"
        if m == spec.bare_method:
            return spec.key, "bare"
    raise AssertionError(m)


# ---------------------------------------------------------------------------------------------
# dry runs of the real-checkpoint experiments
# ---------------------------------------------------------------------------------------------


def test_main_table_is_36_runs(capsys):
    commands, jobs = dry_run(capsys, "main")
    assert len(jobs) == 3 * 6 * 2 == 36
    assert Counter(j["modelpool"] for j in jobs) == {a: 12 for a in ALIASES8}
    assert Counter(variant_of(j) for j in jobs) == {(m, v): 3 for m in MERGERS for v in ("bare", "larv")}
    assert all("taskpool" not in j for j in jobs)  # each alias selects its own task pool
    # bare runs carry the LARV configs' base hyperparameters (fair comparison)
    for j in jobs:
        merger, variant = variant_of(j)
        extra = {k: v for k, v in j.items() if k.startswith("method.")}
        assert extra == (dict(MERGERS[merger].bare_overrides) if variant == "bare" else {})
    iso = [j for j in jobs if j["method"] == "isotropic_merging/iso_c"]
    assert {j["method.scaling_factor"] for j in iso} == {"1.5"}
    for c in commands:
        assert "_target_=fusion_bench_larv.runs.programs.ResumableFusionProgram" in c
        assert "${hydra:job.override_dirname}" in c


def test_main_expand_prints_one_command_per_job(capsys):
    commands, jobs = dry_run(capsys, "main", "--expand")
    assert len(commands) == len(jobs) == 36


def test_tall_tables(capsys):
    _, jobs = dry_run(capsys, "tall")
    assert len(jobs) == 3 * 2 * 6 * 2
    assert {j["modelpool"] for j in jobs} == {f"clip-vit-{b}_{s}" for b in ("base-patch32", "base-patch16", "large-patch14")
                                              for s in ("TALL14", "TALL20")}


def test_filters(capsys):
    _, jobs = dry_run(capsys, "main", "--backbones", "b16", "--mergers", "iso_c", "tsvm", "--variants", "larv")
    assert sorted(j["method"] for j in jobs) == ["larv_iso_c", "larv_tsvm"]
    assert {j["modelpool"] for j in jobs} == {"clip-vit-base-patch16_TA8"}
    _, jobs = dry_run(capsys, "main", "--tasks", "8", "20", "--backbones", "l14", "--mergers", "ties_merging")
    assert {j["modelpool"] for j in jobs} == {"clip-vit-large-patch14_TA8", "clip-vit-large-patch14_TALL20"}
    assert len(jobs) == 4


def test_gate_ablation(capsys):
    _, jobs = dry_run(capsys, "gates")
    assert len(jobs) == 6 * (5 + 1)
    larv = [j for j in jobs if variant_of(j)[1] == "larv"]
    gates = Counter((j["method.gate"], j.get("method.tiers"), j.get("method.tier_assignment")) for j in larv)
    assert gates == {("tiered", "[0.6,1.0,1.2]", "score"): 6, ("tiered", "[0.8,1.2]", "score"): 6,
                     ("continuous", None, None): 6, ("linear_depth", None, None): 6,
                     ("tiered", "[0.6,1.0,1.2]", "depth"): 6}
    assert {j["modelpool"] for j in jobs} == {"clip-vit-base-patch32_TA8"}


def test_tier_sensitivity_grid(capsys):
    commands, jobs = dry_run(capsys, "tiers", "--mid", "0.8", "1.0", "--deep", "1.2", "1.4", "1.6")
    assert len(jobs) == 2 * 3 + 1
    tiers = sorted(j["method.tiers"] for j in jobs if "method.tiers" in j)
    assert tiers == sorted(f"[0.6,{m},{d}]" for m in ("0.8", "1.0") for d in ("1.2", "1.4", "1.6"))
    assert [j for j in jobs if "method.tiers" not in j] == [
        {"modelpool": "clip-vit-base-patch32_TA8", "method": "isotropic_merging/iso_c", "method.scaling_factor": "1.5"}]
    assert len(commands) == 2  # the whole grid is one sweep
    _, jobs = dry_run(capsys, "tiers")
    assert len(jobs) == 5 * 5 + 1


def test_diagnostics_needs_no_evaluation(capsys):
    _, jobs = dry_run(capsys, "diagnostics")
    assert len(jobs) == 2 * 5
    assert {j["taskpool"] for j in jobs} == {"dummy"}
    assert {j["modelpool"] for j in jobs} == {"clip-vit-base-patch32_TA8", "clip-vit-base-patch16_TA8"}
    assert all(variant_of(j)[1] == "larv" for j in jobs)


def test_robustness(capsys):
    _, jobs = dry_run(capsys, "robustness")
    assert len(jobs) == 7 * 6 * 2
    assert {j["modelpool"] for j in jobs} == {"CLIPVisionModelPool/clip-vit-base-patch32_robustness_corrupted"}
    assert {j["taskpool"] for j in jobs} == {"larv/clip-vit-base-patch32_robustness_corrupted"}
    assert Counter(j["+corruption"] for j in jobs) == {c: 12 for c in (
        "motion_blur", "impulse_noise", "gaussian_noise", "pixelate", "spatter", "contrast", "jpeg_compression")}


def test_generalization(capsys):
    _, jobs = dry_run(capsys, "generalization")
    assert len(jobs) == 2 * 6 * 2
    assert Counter(j["modelpool"] for j in jobs) == {
        "CLIPVisionModelPool/clip-vit-base-patch32_generalization_exp1": 12,
        "CLIPVisionModelPool/clip-vit-base-patch32_generalization_exp2": 12}
    assert {j["taskpool"] for j in jobs} == {"CLIPVisionModelTaskPool/clip-vit-classification_TA8"}


def test_nlp(capsys):
    _, jobs = dry_run(capsys, "nlp")
    assert len(jobs) == 6 * 2
    assert {j["modelpool"] for j in jobs} == {"Seq2SeqLMPool/flan-t5-base_glue_lora16"}
    assert {j["taskpool"] for j in jobs} == {"larv/flan-t5_glue_text_generation"}
    for j in jobs:
        assert ("method.block_pattern" in j) == (variant_of(j)[1] == "larv")
        assert j.get("method.block_pattern", "t5") == "t5"


def test_individual_and_all(capsys):
    _, jobs = dry_run(capsys, "individual")
    assert len(jobs) == 3 * 8
    assert {j["method"] for j in jobs} == {"dummy"}
    _, all_jobs = dry_run(capsys, "all")
    # identical jobs (e.g. the bare B/32 baselines of main, gates and tiers) are listed once
    # depth (B/32, 8/14/20 tasks) adds: rho=0 (18); depth tiers and the ramp at 14 and 20 tasks
    # (12 + 12; gates ran them at 8); the validation grids: scales (10+10+7+7+7 per size),
    # LiNeS's beta (5 x 10 + 15 per size) and tiers (9 x 6 per size)
    depth_new = 18 + 12 + 12 + 3 * (10 + 10 + 7 + 7 + 7) + 3 * (5 * 10 + 15) + 3 * 9 * 6
    assert len(all_jobs) == 36 + 72 + (36 - 6) + 25 + 10 + 84 + 24 + 12 + 24 + 9 + depth_new


def test_zeroshot_jobs_evaluate_the_pretrained_model_of_every_pool(capsys):
    _, jobs = dry_run(capsys, "zeroshot")
    assert {j["method"] for j in jobs} == {"dummy"}
    assert sorted(j["modelpool"] for j in jobs) == sorted(
        f"clip-vit-{b}_{s}" for b in ("base-patch32", "base-patch16", "large-patch14")
        for s in ("TA8", "TALL14", "TALL20"))
    _, jobs = dry_run(capsys, "zeroshot", "--suite", "tinyclip")
    assert sorted(j["modelpool"] for j in jobs) == ["tinyclip_synth14", "tinyclip_synth20", "tinyclip_synth8"]


def test_tinyclip_suite(capsys):
    _, jobs = dry_run(capsys, "main", "--suite", "tinyclip")
    assert {j["modelpool"] for j in jobs} == {"tinyclip_synth8"} and len(jobs) == 12
    _, jobs = dry_run(capsys, "tall", "--suite", "tinyclip")
    assert {j["modelpool"] for j in jobs} == {"tinyclip_synth14", "tinyclip_synth20"}
    _, jobs = dry_run(capsys, "individual", "--suite", "tinyclip", "--tasks", "8", "14")
    assert len(jobs) == 8 + 14
    assert {j["method"] for j in jobs} == {"dummy"}
    assert len({j["modelpool.individual"] for j in jobs if j["modelpool"] == "tinyclip_synth14"}) == 14
    with pytest.raises(SystemExit) as usage:  # robustness and generalization: tests/test_robustness_offline.py
        reproduce.main(["nlp", "--suite", "tinyclip", "--dry-run"])
    assert usage.value.code == 2 and "nlp: needs FusionBench's real checkpoints" in capsys.readouterr().err
    # the library says it with a ValueError (the CLI turns it into a usage error)
    with pytest.raises(ValueError, match="nlp: needs FusionBench's real checkpoints"):
        build_jobs("nlp", experiment_args("nlp", reproduce.build_parser().parse_args(["nlp", "--suite", "tinyclip"])))


def test_launcher_and_plumbing_flags(capsys):
    commands, _ = dry_run(capsys, "main", "--mergers", "iso_c", "--launcher", "joblib", "--n-jobs", "2",
                          "--gpus", "0", "1", "--plumbing", "taskpool.dataloader_kwargs.num_workers=0", "method.eta=2")
    for c in commands:
        args = shlex.split(c)
        assert "hydra/launcher=joblib" in args and "hydra.launcher.n_jobs=2" in args and "+gpus=[0,1]" in args
        assert "taskpool.dataloader_kwargs.num_workers=0" in args and "method.eta=2" in args
        excl = [a for a in args if a.startswith("hydra.job.config.override_dirname.exclude_keys=")][0]
        assert "taskpool.dataloader_kwargs.num_workers" in excl and "method.eta" not in excl
    commands, _ = dry_run(capsys, "main", "--launcher", "slurm", "--launcher-arg", "hydra.launcher.partition=a100")
    assert all("hydra/launcher=larv_slurm" in c and "hydra.launcher.partition=a100" in c for c in commands)


def test_group_into_sweeps_never_adds_jobs():
    J = paper_jobs.job
    jobs = [J(("modelpool", "a"), ("method", "x")), J(("modelpool", "b"), ("method", "x")),
            J(("modelpool", "a"), ("method", "y"))]  # not a full product
    sweeps = paper_jobs.group_into_sweeps("t", jobs, ("method", "modelpool"))
    expanded = [tuple(sorted(zip(s.keys, combo))) for s in sweeps
                for combo in itertools.product(*(s.values[k] for k in s.keys))]
    assert sorted(expanded) == sorted(tuple(sorted(j.overrides)) for j in jobs)
    full = jobs + [J(("modelpool", "b"), ("method", "y"))]
    assert len(paper_jobs.group_into_sweeps("t", full, ("method", "modelpool"))) == 1
    # a group is not swept together with overrides of its sub-keys (Hydra's master config)
    assert len(paper_jobs.group_into_sweeps("t", full, ("method", "modelpool"), ["taskpool.tasks"])) == 2
    with_sub = [J(("modelpool", "a"), ("method", m), ("method.scaling_factor", "0.3")) for m in ("x", "y")]
    assert [s.values["method"] for s in paper_jobs.group_into_sweeps("t", with_sub, ("method",))] == [["x"], ["y"]]


# ---------------------------------------------------------------------------------------------
# config names exist: compose every distinct (modelpool, taskpool, method) of the dry runs
# ---------------------------------------------------------------------------------------------


def _compose(overrides):
    from importlib.util import find_spec

    return compose_config(list(find_spec("fusion_bench_config").submodule_search_locations)[0], overrides)


@pytest.mark.parametrize("argv", [
    ["main"], ["tall"], ["gates"], ["tiers"], ["diagnostics"], ["robustness"], ["generalization"], ["nlp"],
    ["individual"],
    ["main", "--suite", "tinyclip", "--tasks", "8", "14", "--plumbing", "taskpool.tasks=[shapes]",
     "--plumbing", "modelpool.build_if_missing=false"],
    ["gates", "--launcher", "slurm"],
    ["diagnostics", "--suite", "tinyclip"],
    ["individual", "--suite", "tinyclip", "--tasks", "8"],
    ["robustness", "--suite", "tinyclip", "--references", "--mergers", "task_arithmetic", "--corruptions", "clean",
     "contrast"],
    ["generalization", "--suite", "tinyclip", "--mergers", "iso_c"],
], ids=lambda a: "-".join(x.strip("-") for x in a[:3]))
def test_every_sweep_composes_like_hydra_multirun(capsys, argv):
    """Compose each printed command the way Hydra's multirun does: the master config (groups at
    their defaults + every fixed override), then every job's config from its overrides."""
    from importlib.util import find_spec

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    commands, _ = dry_run(capsys, *argv)
    config_dir = list(find_spec("fusion_bench_config").submodule_search_locations)[0]
    GlobalHydra.instance().clear()
    n_jobs = 0
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        hydra_app = GlobalHydra.instance().hydra
        for cmd in commands:
            args = shlex.split(cmd)[2:]
            master = hydra_app.compose_config("fabric_model_fusion", args, run_mode=RunMode.MULTIRUN,
                                              with_log_configuration=False)
            task_args = [a for a in args if not a.startswith(("hydra.", "hydra/"))]
            for job in expand(cmd):
                job_args = []
                for a in task_args:
                    k = a.split("=", 1)[0]
                    job_args.append(f"{k}={job[k]}" if k in job else a)
                cfg = hydra_app.config_loader.load_sweep_config(master, job_args)
                assert cfg.hydra.runtime.choices.method == job["method"]
                assert "_target_" in cfg.method
                if job.get("taskpool") != "dummy":
                    assert cfg.taskpool not in (None, {}) and cfg.hydra.runtime.choices.taskpool != "dummy"
                if job["modelpool"].startswith("clip-vit-") and job["modelpool"].endswith(("TALL14", "TALL20")):
                    # the alias picked the task pool with the matching text tower
                    assert cfg.taskpool.base_model == f"openai/{job['modelpool'].split('_')[0]}"
                n_jobs += 1
    assert n_jobs == sum(len(expand(c)) for c in commands)


def test_bare_hyperparameters_match_larv_base_configs():
    for spec in MERGERS.values():
        cfg = _compose([f"method={spec.larv_method}"])
        base = cfg.method.base_method
        for k, v in spec.bare_overrides:
            assert float(base[k.split(".", 1)[1]]) == float(v), (spec.key, k)
        # the other base hyperparameters are FusionBench's own defaults of the bare method
        bare = _compose([f"method={spec.bare_method}"]).method
        for k, v in base.items():
            if k != "_target_" and f"method.{k}" not in dict(spec.bare_overrides):
                assert bare[k] == v, (spec.key, k)


# ---------------------------------------------------------------------------------------------
# launcher configs compose through the real CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher,expected", [
    ("larv_slurm", {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                    "partition": "gpu", "gpus_per_node": 1, "timeout_min": 240}),
    ("larv_joblib", {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}),
])
def test_launcher_config_composes(tmp_path, launcher, expected):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from omegaconf import OmegaConf

    exe = reproduce.fusion_bench_executable()
    out = subprocess.run(exe + [f"hydra/launcher={launcher}", "--cfg", "hydra"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    for k, v in expected.items():
        assert cfg.hydra.launcher[k] == v
    assert cfg.hydra.runtime.choices["hydra/launcher"] == launcher


# ---------------------------------------------------------------------------------------------
# ResumableFusionProgram: skip, atomic writes, GPU claims (no model is loaded)
# ---------------------------------------------------------------------------------------------


def make_program(tmp_path, **kwargs):
    from omegaconf import DictConfig

    return programs.ResumableFusionProgram(
        method=DictConfig({"_target_": "fusion_bench.method.DummyAlgorithm"}),
        modelpool=DictConfig({"_target_": "fusion_bench.modelpool.BaseModelPool", "models": {}}),
        taskpool=None,
        path=DictConfig({"log_dir": str(tmp_path / "job"), "output_dir": str(tmp_path)}),
        report_save_path="{log_dir}/program_report.json",
        print_config=False,
        **kwargs,
    )


def test_resolve_report_path():
    assert programs.resolve_report_path("{log_dir}/r.json", "/x") == "/x/r.json"
    assert programs.resolve_report_path("/abs/r.json", None) == "/abs/r.json"
    assert programs.resolve_report_path("{log_dir}/r.json", None) is None
    assert programs.resolve_report_path(None, "/x") is None


def test_skips_job_with_finished_report(tmp_path, monkeypatch):
    prog = make_program(tmp_path)
    report = tmp_path / "job" / "program_report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"average": {"accuracy": 0.5}}))
    (report.parent / "job.json").write_text(json.dumps({"config": prog._fingerprint()}))
    before = report.stat()

    def boom(self):
        raise AssertionError("a finished job must not run again")

    monkeypatch.setattr(programs.FabricModelFusionProgram, "run", boom)
    result = prog.run()
    assert result["skipped"] is True and result["report"] == {"average": {"accuracy": 0.5}}
    after = report.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(os.listdir(report.parent)) == [programs.JOB_LOCK_FILE, "job.json", "program_report.json"]


@pytest.mark.parametrize("saved", [None, {"overrides": []}, "other method"])
def test_reruns_a_finished_job_whose_config_is_not_known_to_be_the_same(tmp_path, monkeypatch, saved):
    prog = make_program(tmp_path)
    job = tmp_path / "job"
    job.mkdir()
    (job / "program_report.json").write_text(json.dumps({"average": {"accuracy": 0.5}}))
    if saved == "other method":
        other = dict(prog._fingerprint(), method={"_target_": "fusion_bench.method.SimpleAverageAlgorithm"})
        (job / "job.json").write_text(json.dumps({"config": other}))
    elif saved is not None:
        (job / "job.json").write_text(json.dumps(saved))

    def fake_run(self):
        with open(self.report_save_path, "w") as f:
            json.dump({"average": {"accuracy": 0.7}}, f)
        return {"merged_model": None, "report": {"average": {"accuracy": 0.7}}}

    monkeypatch.setattr(programs.FabricModelFusionProgram, "run", fake_run)
    assert not prog.run().get("skipped")
    assert json.loads((job / "program_report.json").read_text()) == {"average": {"accuracy": 0.7}}
    assert json.loads((job / "program_report.json.stale").read_text()) == {"average": {"accuracy": 0.5}}
    assert json.loads((job / "job.json").read_text())["config"] == prog._fingerprint()


def test_runs_and_writes_atomically(tmp_path, monkeypatch):
    seen = {}

    def fake_run(self):
        seen["path"] = self.report_save_path
        assert not (tmp_path / "job" / "program_report.json").exists()
        with open(self.report_save_path, "w") as f:
            json.dump({"average": {"accuracy": 0.7}}, f)
        return {"merged_model": None, "report": {"average": {"accuracy": 0.7}}}

    monkeypatch.setattr(programs.FabricModelFusionProgram, "run", fake_run)
    prog = make_program(tmp_path, corruption="contrast")
    prog.run()
    job = tmp_path / "job"
    assert seen["path"] != str(job / "program_report.json")  # written under a temporary name
    assert Path(seen["path"]).parent == job
    assert json.loads((job / "program_report.json").read_text()) == {"average": {"accuracy": 0.7}}
    assert json.loads((job / "job.json").read_text())["corruption"] == "contrast"
    # no temp files left; the lock file stays (deleting it could let two jobs lock two files)
    assert sorted(os.listdir(job)) == [programs.JOB_LOCK_FILE, "job.json", "program_report.json"]


def test_crash_leaves_no_report_and_rerun_happens(tmp_path, monkeypatch):
    def crash(self):
        with open(self.report_save_path, "w") as f:
            f.write('{"average": ')  # killed half-way through the write
        raise KeyboardInterrupt

    monkeypatch.setattr(programs.FabricModelFusionProgram, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        make_program(tmp_path).run()
    assert not (tmp_path / "job" / "program_report.json").exists()
    # a truncated report (e.g. from a plain FusionBench run) is not taken as finished
    (tmp_path / "job" / "program_report.json").write_text('{"average": ')
    calls = []
    monkeypatch.setattr(programs.FabricModelFusionProgram, "run", lambda self: calls.append(1) or {})
    make_program(tmp_path).run()
    assert calls == [1]


def test_skip_existing_false_forces_rerun(tmp_path, monkeypatch):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "program_report.json").write_text("{}")
    calls = []
    monkeypatch.setattr(programs.FabricModelFusionProgram, "run", lambda self: calls.append(1) or {})
    make_program(tmp_path, skip_existing=False).run()
    assert calls == [1]
    with pytest.raises(TypeError):
        make_program(tmp_path, skip_existing="no")


def test_gpu_claims_are_exclusive(tmp_path):
    a = programs.GpuClaim([3, 5], tmp_path)
    b = programs.GpuClaim([3, 5], tmp_path)
    c = programs.GpuClaim([3, 5], tmp_path, poll_s=0.01)
    assert a.acquire() == 3
    assert b.acquire() == 5
    with pytest.raises(TimeoutError):
        c.acquire(timeout_s=0.05)
    a.release()
    assert c.acquire(timeout_s=1) == 3
    b.release()
    c.release()
    with pytest.raises(ValueError):
        programs.GpuClaim([], tmp_path)


def test_script_wrappers_call_main():
    for script, module in (("reproduce_paper.py", "reproduce"), ("make_tables.py", "tables")):
        out = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert ("reproduce-larv" if module == "reproduce" else "make-larv-tables") in out.stdout


# ---------------------------------------------------------------------------------------------
# real multiruns on a toy model pool (nn.Linear models, no evaluation): plumbing and resume
# ---------------------------------------------------------------------------------------------

TOY_POOL = """\
_target_: fusion_bench.modelpool.BaseModelPool
models:
  _pretrained_:
    _target_: slow_models.linear
  a:
    _target_: slow_models.linear
  b:
    _target_: slow_models.linear
"""
# The delay is read from the environment, not from the config: a rerun with another delay is
# the same job (a config value would be part of the job's fingerprint, see programs.py).
SLOW_MODELS = """\
import os
import time
import torch


def linear():
    time.sleep(float(os.environ.get("TOY_DELAY", "0")))
    return torch.nn.Linear(4, 4)
"""


@pytest.fixture
def toy(tmp_path):
    """A config dir with ``modelpool=toy_linear`` and the sweep of 3 toy jobs."""
    (tmp_path / "cfg" / "modelpool").mkdir(parents=True)
    (tmp_path / "cfg" / "modelpool" / "toy_linear.yaml").write_text(TOY_POOL)
    (tmp_path / "py").mkdir()
    (tmp_path / "py" / "slow_models.py").write_text(SLOW_MODELS)
    J = paper_jobs.job
    jobs = [J(("modelpool", "toy_linear"), ("method", "task_arithmetic"), ("method.scaling_factor", v))
            for v in ("0.1", "0.2", "0.3")]
    (sweep,) = paper_jobs.group_into_sweeps("toy", jobs, ("method", "modelpool", "method.scaling_factor"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "py"), os.environ.get("PYTHONPATH", "")]),
               HYDRA_FULL_ERROR="1")

    def command(*argv):
        args = reproduce.build_parser().parse_args(
            ["main", "--output", str(tmp_path / "out"), "--plumbing", f"hydra.searchpath=[file://{tmp_path / 'cfg'}]",
             *argv, "taskpool=dummy"])
        return reproduce.fusion_bench_executable() + reproduce.sweep_command(sweep, 0, args)[1:]

    def reports():
        return sorted((tmp_path / "out" / "toy_linear" / "task_arithmetic").glob("*/program_report.json"))

    return argparse_ns(tmp_path=tmp_path, command=command, reports=reports, env=env)


class argparse_ns(dict):
    __getattr__ = dict.__getitem__


def _stat(p):
    st = p.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.mark.parametrize("launcher", [
    pytest.param([], id="basic"),
    # loky workers each import fusion_bench: ~60 s on a 2-core machine
    pytest.param(["--launcher", "joblib", "--n-jobs", "2"], id="joblib", marks=pytest.mark.slow),
])
def test_toy_multirun_one_report_per_job_and_resume(toy, launcher):
    if launcher:
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = subprocess.run(toy.command(*launcher), env=toy.env, cwd=toy.tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    reports = toy.reports()
    assert [p.parent.name for p in reports] == [f"method.scaling_factor={v},taskpool=dummy" for v in ("0.1", "0.2", "0.3")]
    for p in reports:
        meta = json.loads((p.parent / "job.json").read_text())
        assert meta["method"]["scaling_factor"] == float(p.parent.name.split(",")[0].split("=")[1])
    # lose one report, rerun: only that job runs again
    before = {p: _stat(p) for p in reports}
    reports[1].unlink()
    out = subprocess.run(toy.command(*launcher), env=toy.env, cwd=toy.tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert toy.reports() == reports
    assert _stat(reports[0]) == before[reports[0]] and _stat(reports[2]) == before[reports[2]]
    assert _stat(reports[1]) != before[reports[1]]
    assert "Skipping finished job" in out.stdout + out.stderr


def test_toy_sweep_killed_after_first_job_resumes(toy):
    """SIGKILL the sweep's process group as soon as its first report exists; the rerun runs the rest."""
    import signal
    import time

    env = dict(toy.env, TOY_DELAY="1.5")  # each job loads 3 models: >= 4.5 s per job
    proc = subprocess.Popen(toy.command(), env=env, cwd=toy.tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not toy.reports():
            assert proc.poll() is None, "the sweep ended before writing its first report"
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = toy.reports()
    assert len(first) == 1
    stamp = _stat(first[0])
    out = subprocess.run(toy.command(), env=toy.env, cwd=toy.tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(toy.reports()) == 3
    assert _stat(first[0]) == stamp  # the finished job was skipped, not redone
    assert not list((toy.tmp_path / "out").rglob("*.partial"))


# ---------------------------------------------------------------------------------------------
# end to end on the embedded benchmark (tests/conftest.py's down-sized tinyclip_synth build):
# 2 mergers x (bare + LARV with 2 tier settings) through `reproduce-larv gates --suite tinyclip`
# ---------------------------------------------------------------------------------------------

GRID = ["gates", "--suite", "tinyclip", "--mergers", "task_arithmetic", "iso_c", "--gates", "tiered3", "tiered2"]


def harness_args(tiny_synth, output):
    plumbing = [o for o in tiny_synth.overrides("tinyclip_synth8") if not o.startswith("modelpool=")]
    args = ["--output", str(output)]
    for o in plumbing + ["taskpool.dataloader_kwargs.num_workers=0", "taskpool.dataloader_kwargs.pin_memory=false"]:
        args += ["--plumbing", o]
    return args


def grid_reports(output):
    return {str(p.parent.relative_to(output)): p for p in sorted(Path(output).rglob("program_report.json"))}


@pytest.mark.slow
def test_tinyclip_grid_basic_launcher_and_tables(tiny_synth, tmp_path, monkeypatch):
    from fusion_bench_larv.paper import tables

    output = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert reproduce.main([*GRID, *harness_args(tiny_synth, output)]) == 0
    reports = grid_reports(output)
    assert len(reports) == 2 + 2 * 2, sorted(reports)
    tiers_seen = Counter()
    for name, path in reports.items():
        report = json.loads(path.read_text())
        metrics = job_reports.task_metrics(report)  # FusionBench's flat layout, LARV or bare
        assert set(tiny_synth.tasks) | {"average"} == set(metrics) == set(report) - {"model_info"}
        assert 0.0 <= metrics["average"]["accuracy"] <= 1.0
        layers = path.parent / "larv_layers.json"
        if "/larv_" in f"/{name}":
            larv = json.loads(layers.read_text())
            assert larv["gate"] == "tiered"
            tiers_seen[tuple(larv["tiers"])] += 1
            assert len(larv["blocks"]) == tiny_synth.recipe.model.vision_layers
        else:
            assert not layers.exists()
    assert tiers_seen == {(0.6, 1.0, 1.2): 2, (0.8, 1.2): 2}

    result = tables.make_tables(output, tmp_path / "tables")
    rows = read_csv_rows(tmp_path / "tables" / "results.csv")
    assert len(rows) == 6 * (len(tiny_synth.tasks) + 1)
    md = (tmp_path / "tables" / "tables.md").read_text()
    gates = [b for b in md.split("### ") if b.startswith("Gate ablation, TinyCLIP")][0]
    for name, path in reports.items():
        acc = job_reports.task_metrics(json.loads(path.read_text()))["average"]["accuracy"]
        assert f"{100 * acc:.1f}" in gates, (name, acc)
    blocks = read_csv_rows(tmp_path / "tables" / "larv_blocks.csv")
    assert len(blocks) == 4 * tiny_synth.recipe.model.vision_layers  # 4 LARV jobs
    # Figure 2 uses default-config LARV jobs: none in this grid. The main bar figure has the bare
    # jobs' averages and no + LARV bars (those cells are missing, not filled in).
    assert set(result["figures"]) == {"fig_main"}
    (ax,) = tables.main_figure(tables.tidy_rows(tables.collect(output))).axes
    bare = sorted(100 * job_reports.task_metrics(json.loads(p.read_text()))["average"]["accuracy"]
                  for n, p in reports.items() if "/larv_" not in f"/{n}")
    assert sorted(b.get_height() for b in ax.containers[0]) == pytest.approx(bare)
    assert all(math.isnan(b.get_height()) for b in ax.containers[1])


def read_csv_rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tinyclip_grid_resume_with_joblib(tiny_synth, tmp_path, monkeypatch):
    """A 1-job sweep first (as if the full sweep had been killed after it), then the full grid
    with the joblib launcher: the finished job is not redone, the other five are created."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    output = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    common = harness_args(tiny_synth, output)
    first = ["gates", "--suite", "tinyclip", "--mergers", "task_arithmetic", "--variants", "bare"]
    assert reproduce.main([*first, *common]) == 0
    (only,) = grid_reports(output).values()
    stamp = _stat(only)
    assert reproduce.main([*GRID, *common, "--launcher", "joblib", "--n-jobs", "2"]) == 0
    reports = grid_reports(output)
    assert len(reports) == 6
    assert _stat(only) == stamp
    assert sum(_stat(p) != stamp for p in reports.values()) == 5
