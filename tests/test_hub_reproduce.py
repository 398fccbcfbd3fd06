"""Every ``reproduce-larv`` experiment, for real, on the hub-shaped cache; then ``make-larv-tables``.

Each experiment runs FusionBench's real pools (and our task pools where we replace FusionBench's)
cut to a handful of jobs with the command-line filters, into one output folder as on a GPU box.
``make-larv-tables`` then renders that folder once, and each test reads its experiment's table
(or CSV, or figure) and checks the cells against the jobs' own ``program_report.json`` /
``larv_layers.json``, read here independently of ``fusion_bench_larv.paper.tables``. The evaluating
experiments get ``--plumbing`` data-loader workers 0 (not part of a job's identity), as
docs/reproducing.md suggests for small CPU machines: FusionBench's default of 8 worker
processes per task is what the users' commands in ``test_hub_cli.py`` run with.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from conftest import run_hub_cli
from hub_fixture import GLUE_TASKS, TALL20
from test_hub_cli import reported_tasks, task_results

pytestmark = pytest.mark.slow

#: the cut of each experiment. Simple averaging's bare and LARV jobs have the same override keys,
#: so each experiment is one Hydra sweep (one `fusion_bench` start); gates and tiers run only
#: their LARV variants and find the bare job that `main` ran (same job folder).
CLIP_WORKERS = ["--plumbing", "taskpool.dataloader_kwargs.num_workers=0"]
CUTS: Dict[str, List[str]] = {
    "main": ["--backbones", "b32", "--mergers", "simple_average", *CLIP_WORKERS],
    "tall": ["--backbones", "b16", "--tasks", "14", "--mergers", "simple_average", *CLIP_WORKERS],
    "gates": ["--mergers", "simple_average", "--variants", "larv", "--gates", "continuous", *CLIP_WORKERS],
    "tiers": ["--mergers", "simple_average", "--variants", "larv", "--mid", "1.0", "--deep", "1.2", "1.4",
              *CLIP_WORKERS],
    "diagnostics": ["--backbones", "b32", "--mergers", "iso_c", "tsvm"],  # taskpool=dummy: no data loaders
    "robustness": ["--mergers", "simple_average", "--corruptions", "contrast", *CLIP_WORKERS],
    "generalization": ["--mergers", "simple_average", *CLIP_WORKERS],
    "nlp": ["--mergers", "simple_average", "--plumbing", "taskpool.num_workers=0"],
    "individual": ["--backbones", "b32", *CLIP_WORKERS],
    # simple averaging has no global scale: fixed rows, LiNeS's beta grid and the tier grid on
    # FusionBench's TA8 validation pool, then the two winners on test
    "depth": ["--mergers", "simple_average", "--tasks", "8", *CLIP_WORKERS],
}
#: experiments whose tables also read another experiment's jobs
NEEDS = {"gates": ["main"], "tiers": ["main"], "individual": ["main"], "depth": ["main"]}
TA8 = list(TALL20[:8])


class Reproduced:
    """Every experiment run once into one output folder (a failure is kept per experiment), then
    ``make-larv-tables`` once over all of them, from a working directory that must stay empty."""

    def __init__(self, hub, root: Path):
        self.hub, self.root, self.errors = hub, root, {}
        self.output, self.out, cwd = root / "larv", root / "tables", root / "cwd"
        cwd.mkdir()
        for name in CUTS:
            try:
                run_hub_cli(["reproduce-larv", name, *CUTS[name], "--output", str(self.output)], hub, cwd)
            except AssertionError as e:
                self.errors[name] = str(e)
        try:
            run_hub_cli(["make-larv-tables", str(self.output), "--out", str(self.out)], hub, cwd)
        except AssertionError as e:
            self.errors["make-larv-tables"] = str(e)
        self.left_in_cwd = sorted(p.name for p in cwd.iterdir())

    def tables(self, experiment: str) -> Path:
        """The rendered tables, once ``experiment`` (and what its tables read) ran."""
        for name in NEEDS.get(experiment, []) + [experiment, "make-larv-tables"]:
            assert name not in self.errors, f"{name} failed:\n{self.errors[name]}"
        assert not self.left_in_cwd, f"written into the working directory: {self.left_in_cwd}"
        return self.out


@pytest.fixture(scope="module")
def reproduced(hub_cache, tmp_path_factory) -> Reproduced:
    return Reproduced(hub_cache, tmp_path_factory.mktemp("reproduce"))


# ---------------------------------------------------------------------------------------------
# Independent readers: job folders and rendered tables
# ---------------------------------------------------------------------------------------------


def job(output: Path, modelpool: str, method: str, overrides: str = "") -> dict:
    """The job folder reproduce-larv gives (modelpool, method, non-plumbing overrides)."""
    path = output / modelpool / method / overrides if overrides else output / modelpool / method
    meta = json.loads((path / "job.json").read_text())
    assert meta["choices"]["modelpool"] == modelpool and meta["choices"]["method"] == method
    report_path = path / "program_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    larv_path = path / "larv_layers.json"
    return dict(path=path, report=report, larv=json.loads(larv_path.read_text()) if larv_path.exists() else None)


def average(j: dict) -> float:
    return task_results(j["report"])["average"]["accuracy"]


def pct(x: float) -> str:
    return "NaN" if math.isnan(x) else f"{100 * x:.1f}"


def pct_delta(x: float, base: float) -> str:
    return f"{100 * x:.1f} ({100 * (x - base):+.1f})"


def md_table(tables_dir: Path, title_start: str) -> List[List[str]]:
    """Rows (header first) of the one table in tables.md whose title starts with ``title_start``."""
    sections = (tables_dir / "tables.md").read_text().split("\n### ")[1:]
    hits = [s for s in sections if s.startswith(title_start)]
    assert len(hits) == 1, f"{len(hits)} tables titled {title_start!r}: {[s.splitlines()[0] for s in sections]}"
    lines = [line for line in hits[0].splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [rows[0]] + rows[2:]  # without the |---| line


def cell(rows: List[List[str]], row_label: str, column: str, occurrence: int = 0) -> str:
    col = rows[0].index(column)
    matches = [r for r in rows[1:] if r[0] == row_label]
    return matches[occurrence][col]


def paired(rows: List[List[str]], merger_label: str, column: str) -> tuple:
    """(bare cell, + LARV cell) of a merger: the "+ LARV" row right after the merger's row."""
    labels = [r[0] for r in rows]
    i = labels.index(merger_label)
    col = rows[0].index(column)
    assert rows[i + 1][0] == "+ LARV"
    return rows[i][col], rows[i + 1][col]


# ---------------------------------------------------------------------------------------------
# One test per experiment
# ---------------------------------------------------------------------------------------------


def test_main(reproduced):
    out = reproduced.tables("main")
    bare = job(reproduced.output, "clip-vit-base-patch32_TA8", "simple_average")
    larv = job(reproduced.output, "clip-vit-base-patch32_TA8", "larv_simple_average")
    assert reported_tasks(bare["report"]) == TA8
    assert larv["larv"]["num_blocks"] == reproduced.hub.clip_blocks("clip-vit-base-patch32")
    rows = md_table(out, "Average accuracy (%), 8 tasks")
    assert paired(rows, "Simple Averaging", "ViT-B/32") == (pct(average(bare)), pct_delta(average(larv), average(bare)))
    assert (out / "fig_main.png").exists()


def test_tall(reproduced):
    out = reproduced.tables("tall")
    bare = job(reproduced.output, "clip-vit-base-patch16_TALL14", "simple_average")
    larv = job(reproduced.output, "clip-vit-base-patch16_TALL14", "larv_simple_average")
    assert reported_tasks(bare["report"]) == list(TALL20[:14])
    assert larv["larv"]["num_blocks"] == reproduced.hub.clip_blocks("clip-vit-base-patch16")
    rows = md_table(out, "Average accuracy (%) by number of tasks")
    assert paired(rows, "Simple Averaging", "ViT-B/16 (14)") == (pct(average(bare)),
                                                                pct_delta(average(larv), average(bare)))


def test_gates(reproduced):
    out = reproduced.tables("gates")
    bare = job(reproduced.output, "clip-vit-base-patch32_TA8", "simple_average")
    cont = job(reproduced.output, "clip-vit-base-patch32_TA8", "larv_simple_average", "method.gate=continuous")
    assert cont["larv"]["gate"] == "continuous"
    rows = md_table(out, "Gate ablation, ViT-B/32, 8 tasks: accuracy")
    assert cell(rows, "bare", "Simple Averaging") == pct(average(bare))
    assert cell(rows, "continuous", "Simple Averaging") == pct_delta(average(cont), average(bare))


def test_tiers(reproduced):
    out = reproduced.tables("tiers")
    bare = average(job(reproduced.output, "clip-vit-base-patch32_TA8", "simple_average"))
    rows = md_table(out, "Tier sensitivity, Simple Averaging on ViT-B/32, 8 tasks")
    for deep in ("1.2", "1.4"):
        j = job(reproduced.output, "clip-vit-base-patch32_TA8", "larv_simple_average",
                f"method.gate=tiered,method.tiers=[0.6,1.0,{deep}]")
        assert j["larv"]["tiers"] == [0.6, 1.0, float(deep)]
        assert cell(rows, "1.0", deep) == f"{100 * (average(j) - bare):+.1f}"
    assert (out / "fig_tiers_ViTB32_8_simple_average.png").exists()


def test_diagnostics(reproduced):
    out = reproduced.tables("diagnostics")
    with open(out / "larv_blocks.csv") as f:
        blocks = list(csv.DictReader(f))
    for method in ("larv_iso_c", "larv_tsvm"):
        j = job(reproduced.output, "clip-vit-base-patch32_TA8", method, "taskpool=dummy")
        entries = j["report"].get("model", j["report"])  # either report layout
        assert not any(isinstance(v, dict) and "accuracy" in v for v in entries.values()), "diagnostics jobs do not evaluate"
        record = j["larv"]["blocks"]
        assert len(record) == reproduced.hub.clip_blocks("clip-vit-base-patch32")
        rows = [r for r in blocks if r["method"] == method and r["run_dir"].endswith("taskpool=dummy")]
        assert [int(r["block"]) for r in rows] == [b["index"] for b in record]
        for r, b in zip(rows, record):
            for key in ("e", "c", "s", "scale"):
                assert float(r[key]) == pytest.approx(b[key]), (method, key)
    assert (out / "fig_diagnostics.png").exists()


def test_robustness(reproduced):
    out = reproduced.tables("robustness")
    pool = "CLIPVisionModelPool/clip-vit-base-patch32_robustness_corrupted"
    dirname = "+corruption=contrast,taskpool=larv/clip-vit-base-patch32_robustness_corrupted"
    bare = job(reproduced.output, pool, "simple_average", dirname)
    larv = job(reproduced.output, pool, "larv_simple_average", dirname)
    assert reported_tasks(bare["report"]) == ["stanford-cars", "eurosat", "resisc45", "gtsrb"]
    rows = md_table(out, "Corruption robustness")
    expected = (pct(average(bare)), pct_delta(average(larv), average(bare)))
    assert paired(rows, "Simple Averaging", "Contrast") == expected
    assert paired(rows, "Simple Averaging", "Avg.") == expected  # one corruption: its average
    assert (out / "fig_corruption.png").exists()


def test_generalization(reproduced):
    out = reproduced.tables("generalization")
    rows = md_table(out, "Generalization")
    seen = {"exp1": {"sun397", "stanford-cars", "resisc45", "dtd", "svhn", "gtsrb"},
            "exp2": {"sun397", "stanford-cars", "gtsrb", "eurosat", "dtd", "mnist"}}
    for exp in ("exp1", "exp2"):
        pool = f"CLIPVisionModelPool/clip-vit-base-patch32_generalization_{exp}"
        dirname = "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8"
        for part in ("seen", "unseen"):
            vals = {}
            for method in ("simple_average", "larv_simple_average"):
                results = task_results(job(reproduced.output, pool, method, dirname)["report"])
                tasks = [t for t in TA8 if (t in seen[exp]) == (part == "seen")]
                vals[method] = sum(results[t]["accuracy"] for t in tasks) / len(tasks)
            assert paired(rows, "Simple Averaging", f"{exp} {part}") == (
                pct(vals["simple_average"]), pct_delta(vals["larv_simple_average"], vals["simple_average"]))


def test_nlp(reproduced, hub_cache):
    out = reproduced.tables("nlp")
    pool = "Seq2SeqLMPool/flan-t5-base_glue_lora16"
    tp = "taskpool=larv/flan-t5_glue_text_generation"
    bare = task_results(job(reproduced.output, pool, "simple_average", tp)["report"])
    larv_job = job(reproduced.output, pool, "larv_simple_average", f"method.block_pattern=t5,{tp}")
    larv = task_results(larv_job["report"])
    assert larv_job["larv"]["num_blocks"] == 4  # 2 encoder + 2 decoder blocks of the tiny T5
    rows = md_table(out, "Flan-T5-base LoRA-16 on GLUE")
    for task in GLUE_TASKS:
        metric = "spearman_rho" if task == "stsb" else "accuracy"
        b, lv = bare[task][metric], larv[task][metric]
        expected = (pct(b), pct(lv) if math.isnan(b) or math.isnan(lv) else pct_delta(lv, b))
        assert paired(rows, "Simple Averaging", task) == expected, task
    for report in (bare, larv):  # the average covers the tasks with a finite score
        scores = [report[t].get("accuracy", report[t].get("spearman_rho")) for t in GLUE_TASKS]
        finite = [s for s in scores if not math.isnan(s)]
        assert report["average"]["num_scored"] == len(finite)
        assert report["average"]["score"] == pytest.approx(sum(finite) / len(finite))
    assert paired(rows, "Simple Averaging", "Avg.") == (
        pct(bare["average"]["score"]), pct_delta(larv["average"]["score"], bare["average"]["score"]))
    # the tokenized GLUE data went to FusionBench's path.cache_dir, keyed by the tokenizer
    cached = sorted(p.parent.name for p in hub_cache.fusion_bench_cache.glob("fusion_bench_larv/flan-t5_glue/*/*"))
    assert cached == sorted(GLUE_TASKS)


def test_individual(reproduced):
    out = reproduced.tables("individual")
    accs = []
    for task in TA8:
        j = job(reproduced.output, "CLIPVisionModelPool/clip-vit-base-patch32_individual", "dummy",
                f"+individual_task={task},taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8")
        accs.append(task_results(j["report"])[task]["accuracy"])
    rows = md_table(out, "Average accuracy (%), 8 tasks")
    assert cell(rows, "Individual fine-tuned", "ViT-B/32") == pct(sum(accs) / len(accs))
    bare = task_results(job(reproduced.output, "clip-vit-base-patch32_TA8", "simple_average")["report"])
    normalized = sum(bare[t]["accuracy"] / a for t, a in zip(TA8, accs)) / len(TA8)
    assert paired(md_table(out, "Normalized accuracy (%), 8 tasks"), "Simple Averaging", "ViT-B/32")[0] == pct(normalized)


def test_depth(reproduced):
    out = reproduced.tables("depth")
    selection = json.loads((reproduced.output / "selection_depth.json").read_text())["rows"]
    assert {r["row"] for r in selection} == {"lines", "larv_tuned_tiers"}
    for record in selection:
        assert record["val_taskpool"] == "CLIPVisionModelTaskPool/clip-vit-classification_TA8_val"
        accs = [g["val_accuracy"] for g in record["grid"]]
        assert record["selected"] == record["grid"][accs.index(max(accs))]["value"]
    rows = md_table(out, "LARV vs depth priors, ViT-B/32, 8 tasks")
    bare = average(job(reproduced.output, "clip-vit-base-patch32_TA8", "simple_average"))
    assert cell(rows, "bare (FusionBench setting)", "Simple Averaging") == pct(bare)
    lines = next(r for r in selection if r["row"] == "lines")
    assert f"[β {lines['selected']}; val" in cell(rows, "LiNeS, β tuned †", "Simple Averaging")
