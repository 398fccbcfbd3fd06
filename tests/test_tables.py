"""make_tables on hand-written job folders: tidy CSV rows, table values, figure contents.

The job folders mimic what ``reproduce-larv`` + ``ResumableFusionProgram`` write
(``job.json`` + ``program_report.json``); every accuracy is known, so the tables can be checked
cell by cell. No FusionBench run is needed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fusion_bench_larv.paper import tables
from fusion_bench_larv.paper.labels import GENERALIZATION_SEEN
from fusion_bench_larv.paper.experiments import GATE_VARIANTS, MERGERS

TASKS8 = ["sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]


def write_job(root: Path, modelpool: str, method: str, overrides=(), accs=None, larv=None, extra=None,
              report_extra=None, with_job_json=True):
    """One job folder (FusionBench's report, the LARV record in ``larv_layers.json``);
    ``accs`` = {task: accuracy}; returns the folder."""
    name = ",".join(sorted(overrides)) or "_"
    d = root / modelpool / method / name
    d.mkdir(parents=True, exist_ok=True)
    report = {}
    if accs:
        for t, a in accs.items():
            report[t] = {"accuracy": a, "loss": 1.0 - a}
        report["average"] = {"accuracy": sum(accs.values()) / len(accs), "loss": 0.5}
    report["model_info"] = {"trainable_params": 1, "all_params": 1, "trainable_percentage": 1.0}
    if larv is not None:
        (d / "larv_layers.json").write_text(json.dumps(larv))
    report.update(report_extra or {})
    meta = {"overrides": [f"modelpool={modelpool}", f"method={method}", *overrides],
            "choices": {"modelpool": modelpool, "method": method}, "method": {}}
    meta.update(extra or {})
    if with_job_json:
        (d / "job.json").write_text(json.dumps(meta))
    (d / "program_report.json").write_text(json.dumps(report))
    return d


def larv_record(gate="tiered", tiers=(0.6, 1.0, 1.2), tier_assignment="score", n_blocks=4, offset=0.0):
    return {
        "gate": gate, "tiers": list(tiers), "tier_assignment": tier_assignment, "num_blocks": n_blocks,
        "blocks": [{"index": i, "prefix": f"vision_model.encoder.layers.{i}.", "e": 1.0 + i + offset,
                    "c": 0.5 - 0.1 * i, "z": 0.0, "s": 0.1 * (i + 1) + offset, "tier": min(i, 2), "scale": 1.0}
                   for i in range(n_blocks)],
    }


def bare_overrides(merger):
    return [f"{k}={v}" for k, v in MERGERS[merger].bare_overrides]


def uniform(acc, tasks=TASKS8):
    return {t: acc for t in tasks}


@pytest.fixture
def tree(tmp_path):
    """Main table on two backbones (one missing +LARV cell), gates, tier grid, corruption, individual."""
    root = tmp_path / "runs"
    # main table: B/32 and B/16, task arithmetic and iso_c; B/16 iso_c + LARV missing on purpose
    vals = {("b32", "task_arithmetic"): (0.680, 0.702), ("b32", "iso_c"): (0.828, 0.859),
            ("b16", "task_arithmetic"): (0.771, 0.780), ("b16", "iso_c"): (0.850, None)}
    pools = {"b32": "clip-vit-base-patch32_TA8", "b16": "clip-vit-base-patch16_TA8"}
    for (b, m), (bare, lv) in vals.items():
        write_job(root, pools[b], MERGERS[m].bare_method, bare_overrides(m), uniform(bare))
        if lv is not None:
            write_job(root, pools[b], MERGERS[m].larv_method, (), uniform(lv), larv=larv_record())
    # gate ablation on B/32 for iso_c (all five variants)
    for k, g in enumerate(GATE_VARIANTS):
        ov = [f"{a}={v}" for a, v in GATE_VARIANTS[g]]
        rec = larv_record(gate=dict(GATE_VARIANTS[g])["method.gate"],
                          tiers=[float(x) for x in dict(GATE_VARIANTS[g]).get("method.tiers", "[0.6,1.0,1.2]").strip("[]").split(",")],
                          tier_assignment=dict(GATE_VARIANTS[g]).get("method.tier_assignment", "score"))
        write_job(root, pools["b32"], "larv_iso_c", ov, uniform(0.830 + 0.005 * k), larv=rec)
    # tier grid 2 x 2 for iso_c on B/32 (shallow 0.6)
    for i, mid in enumerate((0.8, 1.0)):
        for j, deep in enumerate((1.2, 1.4)):
            ov = ["method.gate=tiered", f"method.tiers=[0.6,{mid},{deep}]"]
            write_job(root, pools["b32"], "larv_iso_c", ov, uniform(0.828 + 0.01 * i + 0.002 * j),
                      larv=larv_record(tiers=(0.6, mid, deep)))
    # corruption: iso_c bare / +LARV on two corruptions (4 tasks)
    rob = "CLIPVisionModelPool/clip-vit-base-patch32_robustness_corrupted"
    tasks4 = ["stanford_cars", "eurosat", "resisc45", "gtsrb"]
    for c, (bare, lv) in {"motion_blur": (0.60, 0.64), "contrast": (0.50, 0.51)}.items():
        extra = {"corruption": c}
        write_job(root, rob, "isotropic_merging/iso_c", bare_overrides("iso_c") + [f"+corruption={c}"],
                  uniform(bare, tasks4), extra=extra)
        write_job(root, rob, "larv_iso_c", [f"+corruption={c}"], uniform(lv, tasks4), larv=larv_record(), extra=extra)
    # diagnostics-only job (dummy task pool): blocks but no accuracy rows
    write_job(root, pools["b16"], "larv_tsvm", ["taskpool=dummy"], None, larv=larv_record(offset=0.5))
    return root


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tidy_csv_has_exactly_the_expected_rows(tree, tmp_path):
    out = tmp_path / "out"
    result = tables.make_tables(tree, out)
    rows = read_csv(out / "results.csv")
    # 7 main jobs + 5 gate + 4 tier jobs with 8 tasks + average; 4 corruption jobs with 4 tasks + average
    assert len(rows) == (7 + 5 + 4) * 9 + 4 * 5
    assert result["runs"] == 7 + 5 + 4 + 4 + 1
    keys = {(r["run_dir"], r["task"]) for r in rows}
    assert len(keys) == len(rows)  # one row per (job, task)
    ta = [r for r in rows if r["merger"] == "task_arithmetic" and r["backbone"] == "ViT-B/32" and r["larv"] == "False"]
    assert {r["task"] for r in ta} == set(TASKS8) | {"average"}
    assert all(float(r["accuracy"]) == pytest.approx(0.680) for r in ta)
    assert {r["num_tasks"] for r in ta} == {"8"}
    rob = [r for r in rows if r["kind"] == "robustness"]
    assert {r["corruption"] for r in rob} == {"motion_blur", "contrast"}
    blocks = read_csv(out / "larv_blocks.csv")
    n_larv_jobs = 3 + 5 + 4 + 2 + 1
    assert len(blocks) == n_larv_jobs * 4


def test_markdown_and_latex_contain_measured_values(tree, tmp_path):
    out = tmp_path / "out"
    result = tables.make_tables(tree, out)
    md = (out / "tables.md").read_text()
    tex = (out / "tables.tex").read_text()
    main = md.split("### ")[1]
    assert "| ViT-B/32 | ViT-B/16 |" in main.replace("Method ", "Method")
    lines = [line for line in main.splitlines() if line.startswith("| ")]
    assert lines[1] == "| Task Arithmetic | 68.0 | 77.1 |"
    assert lines[2] == "| + LARV | 70.2 (+2.2) | 78.0 (+0.9) |"
    assert lines[3] == "| Iso-C | 82.8 | 85.0 |"
    assert lines[4] == "| + LARV | 85.9 (+3.1) | — |"  # missing run: never invented
    assert any("Iso-C +LARV @ ViT-B/16" in m for m in result["missing"])
    assert r"Task Arithmetic & 68.0 & 77.1 \\" in tex
    assert r"+ LARV & 85.9 (+3.1) & -- \\" in tex
    assert r"\begin{tabular}{lrr}" in tex
    # gate ablation: every variant's row with Δ vs bare (82.8)
    gates = [b for b in md.split("### ") if b.startswith("Gate ablation")][0]
    assert "| tiered3 | 83.0 (+0.2) |" in gates
    assert "| depth_tiers | 85.0 (+2.2) |" in gates
    # tier grid: Δ in points
    tiers = [b for b in md.split("### ") if b.startswith("Tier sensitivity")][0]
    assert "| 0.8 | +0.0 | +0.2 |" in tiers
    assert "| 1.0 | +1.0 | +1.2 |" in tiers
    # corruption table: per corruption and the average
    rob = [b for b in md.split("### ") if b.startswith("Corruption")][0]
    assert "| Iso-C | 60.0 | 50.0 | 55.0 |" in rob
    assert "| + LARV | 64.0 (+4.0) | 51.0 (+1.0) | 57.5 (+2.5) |" in rob


def test_figures_have_expected_content(tree, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / "out"
    result = tables.make_tables(tree, out)
    for name in ("fig_diagnostics", "fig_corruption"):
        assert {p.suffix for p in result["figures"][name]} == {".png", ".pdf"}
        assert all(p.stat().st_size > 1000 for p in result["figures"][name])
    tier_figs = [k for k in result["figures"] if k.startswith("fig_tiers_")]
    assert len(tier_figs) == 1

    runs = tables.collect(tree)
    blocks = tables.block_rows(runs)
    fig = tables.diagnostics_figure(blocks)
    axes = fig.axes
    assert len(axes) == 2 * 3  # B/32 and B/16 rows x (e, c, s)
    assert axes[0].get_xlabel() == r"block $\ell$"
    assert [ax.get_ylabel().split(" ")[0] for ax in axes[:3]] == [r"$e_\ell$", r"$c_\ell$", r"$s_\ell$"]
    # B/32: task arithmetic and iso_c (default LARV jobs); B/16: task arithmetic and TSV-M
    assert [line.get_label() for line in axes[0].get_lines()] == ["Task Arithmetic", "Iso-C"]
    assert [line.get_label() for line in axes[3].get_lines()] == ["Task Arithmetic", "TSV-M"]
    assert list(axes[0].get_lines()[0].get_xdata()) == [0, 1, 2, 3]
    assert list(axes[3].get_lines()[1].get_ydata()) == pytest.approx([1.5, 2.5, 3.5, 4.5])

    fig = tables.corruption_figure(tables.tidy_rows(runs))
    (ax,) = fig.axes
    assert ax.get_ylabel() == "accuracy (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Motion", "Contrast", "Avg."]
    assert len(ax.containers) == 2  # bare and + LARV
    heights = [[p.get_height() for p in c] for c in ax.containers]
    assert heights[0] == pytest.approx([60.0, 50.0, 55.0])
    assert heights[1] == pytest.approx([64.0, 51.0, 57.5])

    idx = tables.Index(tables.tidy_rows(runs))
    mids, deeps, matrix, shallow, bare = tables.tier_grid(idx, idx.rows, "ViT-B/32", 8, "iso_c")
    fig = tables.tier_figure(mids, deeps, matrix, "t")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "deep tier scale" and ax.get_ylabel() == "middle tier scale"
    img = ax.get_images()[0]
    assert img.get_array().shape == (2, 2)
    assert img.get_array()[1][1] == pytest.approx(1.2)
    assert img.norm.vcenter == 0.0
    assert fig.axes[1].get_ylabel() == "Δ accuracy (points)"


def test_missing_everything_is_not_an_error(tmp_path):
    result = tables.make_tables(tmp_path / "empty", tmp_path / "out")
    assert result["runs"] == 0 and result["tables"] == [] and result["figures"] == {}
    assert read_csv(tmp_path / "out" / "results.csv") == []


def test_normalized_accuracy_uses_individual_runs(tmp_path):
    root = tmp_path / "runs"
    pool = "clip-vit-base-patch32_TA8"
    write_job(root, pool, "task_arithmetic", bare_overrides("task_arithmetic"), uniform(0.45))
    write_job(root, pool, "larv_task_arithmetic", (), uniform(0.72), larv=larv_record())
    for t in TASKS8:  # individual model of task t: 0.9 on its own task
        write_job(root, "CLIPVisionModelPool/clip-vit-base-patch32_individual", "dummy", [f"+individual_task={t}"],
                  {u: (0.9 if u == t else 0.1) for u in TASKS8}, extra={"individual_task": t})
    tables.make_tables(root, tmp_path / "out")
    md = (tmp_path / "out" / "tables.md").read_text()
    norm = [b for b in md.split("### ") if b.startswith("Normalized")][0]
    assert "| Task Arithmetic | 50.0 |" in norm
    assert "| + LARV | 80.0 (+30.0) |" in norm


def test_shipped_defaults_are_the_tiered3_gate_variant():
    from omegaconf import OmegaConf

    from fusion_bench_larv.paper.experiments import DEFAULT_GATE_VARIANT

    defaults = OmegaConf.load(Path(__file__).parents[1] / "config" / "method" / "larv" / "_defaults.yaml")
    variant = dict(GATE_VARIANTS[DEFAULT_GATE_VARIANT])
    assert variant["method.gate"] == defaults.gate
    assert [float(x) for x in variant["method.tiers"].strip("[]").split(",")] == list(defaults.tiers)
    assert variant["method.tier_assignment"] == defaults.tier_assignment


def test_gate_table_takes_tiered3_from_the_defaults_job_when_not_spelled_out(tmp_path):
    root = tmp_path / "runs"
    pool = "clip-vit-base-patch32_TA8"
    write_job(root, pool, "isotropic_merging/iso_c", bare_overrides("iso_c"), uniform(0.80))
    write_job(root, pool, "larv_iso_c", (), uniform(0.83), larv=larv_record())  # shipped defaults
    write_job(root, pool, "larv_iso_c", ["method.gate=continuous"], uniform(0.81), larv=larv_record(gate="continuous"))
    result = tables.make_tables(root, tmp_path / "out")
    md = (tmp_path / "out" / "tables.md").read_text()
    gates = [b for b in md.split("### ") if b.startswith("Gate ablation")][0]
    assert "| tiered3 | 83.0 (+3.0) |" in gates
    assert "| continuous | 81.0 (+1.0) |" in gates
    assert "| tiered2 | — |" in gates
    assert "the same configuration" in gates
    assert not any("tiered3" in m for m in result["missing"])


def test_zero_shot_and_individual_reference_rows(tmp_path):
    root = tmp_path / "runs"
    pool = "clip-vit-base-patch32_TA8"
    write_job(root, pool, "task_arithmetic", bare_overrides("task_arithmetic"), uniform(0.45))
    write_job(root, pool, "larv_task_arithmetic", (), uniform(0.72), larv=larv_record())
    write_job(root, pool, "dummy", (), {t: (0.3 if i % 2 else 0.5) for i, t in enumerate(TASKS8)})
    for i, t in enumerate(TASKS8):  # individual model of task t: 0.8 or 1.0 on its own task
        write_job(root, "CLIPVisionModelPool/clip-vit-base-patch32_individual", "dummy", [f"+individual_task={t}"],
                  {u: ((1.0 if i % 2 else 0.8) if u == t else 0.1) for u in TASKS8}, extra={"individual_task": t})
    runs = tables.collect(root)
    assert sorted(r.labels["kind"] for r in runs) == sorted(["clip", "clip", "zeroshot"] + ["individual"] * 8)
    tables.make_tables(root, tmp_path / "out")
    md = (tmp_path / "out" / "tables.md").read_text()
    main = [b for b in md.split("### ") if b.startswith("Average accuracy")][0]
    lines = [line for line in main.splitlines() if line.startswith("|")]  # header, rule, rows
    assert lines[2:5] == ["| Pretrained (zero-shot) | 40.0 |", "| Individual fine-tuned | 90.0 |",
                          "| Task Arithmetic | 45.0 |"]
    norm = [b for b in md.split("### ") if b.startswith("Normalized")][0]
    # zero-shot / individual per task: 0.5/0.8 and 0.3/1.0, alternating
    assert f"| Pretrained (zero-shot) | {100 * (0.5 / 0.8 + 0.3 / 1.0) / 2:.1f} |" in norm
    assert "Individual fine-tuned" not in norm


def test_generalization_and_nlp_tables(tmp_path):
    root = tmp_path / "runs"
    exp1 = "CLIPVisionModelPool/clip-vit-base-patch32_generalization_exp1"
    accs = {t: (0.8 if t in GENERALIZATION_SEEN["exp1"] else 0.4) for t in TASKS8}
    write_job(root, exp1, "simple_average", ["taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8"], accs)
    nlp = "Seq2SeqLMPool/flan-t5-base_glue_lora16"
    glue = {"glue-cola": 0.7, "glue-rte": 0.5}
    write_job(root, nlp, "simple_average", [], glue)
    write_job(root, nlp, "larv_simple_average", ["method.block_pattern=t5"], {"glue-cola": 0.75, "glue-rte": 0.55},
              larv=larv_record())
    tables.make_tables(root, tmp_path / "out")
    md = (tmp_path / "out" / "tables.md").read_text()
    gen = [b for b in md.split("### ") if b.startswith("Generalization")][0]
    assert "| Simple Averaging | 80.0 | 40.0 |" in gen
    assert "| + LARV | — | — |" in gen
    nlp_t = [b for b in md.split("### ") if b.startswith("Flan-T5")][0]
    assert "| Simple Averaging | 70.0 | 50.0 | 60.0 |" in nlp_t
    assert "| + LARV | 75.0 (+5.0) | 55.0 (+5.0) | 65.0 (+5.0) |" in nlp_t


def test_nlp_table_shows_nan_and_averages_the_scored_tasks(tmp_path):
    """STS-B's ρ is NaN on constant predictions: shown as NaN, never averaged in, no Δ against it.
    The bare job has FusionBench's GLUE report (no average), the LARV job our pool's."""
    root = tmp_path / "runs"
    nlp = "Seq2SeqLMPool/flan-t5-base_glue_lora16"
    taskpool = "taskpool=larv/flan-t5_glue_text_generation"
    bare = {"cola": {"accuracy": 0.6}, "rte": {"accuracy": 0.4}, "stsb": {"spearman_rho": float("nan")}}
    ours = {"cola": {"accuracy": 0.7}, "rte": {"accuracy": 0.5}, "stsb": {"spearman_rho": 0.3},
            "average": {"score": 0.5, "num_scored": 3}}
    write_job(root, nlp, "simple_average", [taskpool], None, report_extra=bare)
    write_job(root, nlp, "larv_simple_average", [taskpool, "method.block_pattern=t5"], None,
              report_extra=ours, larv=larv_record())
    tables.make_tables(root, tmp_path / "out")
    md = (tmp_path / "out" / "tables.md").read_text()
    nlp_t = [b for b in md.split("### ") if b.startswith("Flan-T5")][0]
    assert "stsb: Spearman's ρ × 100" in nlp_t.splitlines()[0]
    assert "| Method | cola | rte | stsb | Avg. |" in nlp_t
    assert "| Simple Averaging | 60.0 | 40.0 | NaN | 50.0 |" in nlp_t
    assert "| + LARV | 70.0 (+10.0) | 50.0 (+10.0) | 30.0 | 50.0 (+0.0) |" in nlp_t
    rows = {(r["method"], r["task"]): r for r in read_csv(tmp_path / "out" / "results.csv")}
    assert rows[("simple_average", "stsb")]["metric"] == "spearman_rho"
    assert rows[("larv_simple_average", "average")]["metric"] == "score"


def test_overrides_yaml_fallback_without_job_json(tmp_path):
    """Jobs run with FusionBench's own program (no job.json) are labelled from Hydra's overrides."""
    root = tmp_path / "runs"
    d = write_job(root, "tinyclip_synth8", "simple_average", [], uniform(0.5), with_job_json=False)
    hydra_out = tmp_path / "hydra" / "0"
    hydra_out.mkdir(parents=True)
    (hydra_out / "overrides.yaml").write_text("- modelpool=tinyclip_synth8\n- method=simple_average\n")
    (d / "hydra_output").symlink_to(hydra_out)
    runs = tables.collect(root)
    assert len(runs) == 1
    assert runs[0].labels["backbone"] == "TinyCLIP" and runs[0].labels["num_tasks"] == 8
    assert runs[0].labels["merger"] == "simple_average" and runs[0].labels["larv"] is False


def test_plain_multirun_job_folders_are_labelled_from_their_overrides_yaml(tmp_path):
    """A plain `fusion_bench -m` job folder is Hydra's own: overrides.yaml lies in it."""
    root = tmp_path / "multirun"
    d = write_job(root, "tinyclip_synth8", "larv_iso_c", ["method.tiers=[0.6,1.0,1.4]"], uniform(0.5),
                  larv=larv_record(tiers=(0.6, 1.0, 1.4)), with_job_json=False)
    (d / "overrides.yaml").write_text("- modelpool=tinyclip_synth8\n- method=larv_iso_c\n- method.tiers=[0.6,1.0,1.4]\n")
    (run,) = tables.collect(root)
    assert (run.labels["merger"], run.labels["larv"], run.labels["tiers"]) == ("iso_c", True, "0.6/1/1.4")


def test_latex_escaping():
    assert tables.latex_escape("50% of x_1 & Δ — #") == r"50\% of x\_1 \& $\Delta$ -- \#"


def test_main_cli(tree, tmp_path):
    assert tables.main([str(tree), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "tables.md").exists()


def test_synthetic_individual_runs_normalize_tinyclip(tmp_path):
    """``--suite tinyclip`` individual jobs (``modelpool.individual=<task>``) feed the normalized table."""
    root = tmp_path / "runs"
    tasks = ["shapes", "handwritten_digits"]
    write_job(root, "tinyclip_synth8", "simple_average", [], {"shapes": 0.4, "handwritten_digits": 0.6})
    write_job(root, "tinyclip_synth8", "larv_simple_average", [], {"shapes": 0.5, "handwritten_digits": 0.6},
              larv=larv_record())
    for t in tasks:
        write_job(root, "tinyclip_synth8", "dummy", [f"modelpool.individual={t}"],
                  {u: (0.8 if u == t else 0.1) for u in tasks})
    runs = tables.collect(root)
    ind = [r for r in runs if r.labels["kind"] == "individual"]
    assert sorted(r.labels["individual_task"] for r in ind) == sorted(tasks)
    assert {r.labels["backbone"] for r in ind} == {"TinyCLIP"}
    tables.make_tables(root, tmp_path / "out")
    md = (tmp_path / "out" / "tables.md").read_text()
    norm = [b for b in md.split("### ") if b.startswith("Normalized")][0]
    assert "| Simple Averaging | 62.5 |" in norm  # (0.4/0.8 + 0.6/0.8) / 2
    assert "| + LARV | 68.8 (+6.2) |" in norm  # (0.5/0.8 + 0.6/0.8) / 2 = 0.6875


def test_gate_table_has_a_normalized_version_with_individual_runs(tmp_path):
    root = tmp_path / "runs"
    pool = "clip-vit-base-patch32_TA8"
    write_job(root, pool, "isotropic_merging/iso_c", bare_overrides("iso_c"), uniform(0.45))
    write_job(root, pool, "larv_iso_c", ["method.gate=continuous"], uniform(0.54), larv=larv_record(gate="continuous"))
    for t in TASKS8:  # individual model of task t: 0.9 on its own task
        write_job(root, "CLIPVisionModelPool/clip-vit-base-patch32_individual", "dummy", [f"+individual_task={t}"],
                  {u: (0.9 if u == t else 0.1) for u in TASKS8}, extra={"individual_task": t})
    result = tables.make_tables(root, tmp_path / "out")
    assert "gates_ViTB32_8" in result["tables"] and "gates_normalized_ViTB32_8" in result["tables"]
    md = (tmp_path / "out" / "tables.md").read_text()
    acc, norm = [b for b in md.split("### ") if b.startswith("Gate ablation")]
    assert "accuracy (%)" in acc and "| continuous | 54.0 (+9.0) |" in acc
    assert "normalized accuracy" in norm
    assert "| bare | 50.0 |" in norm and "| continuous | 60.0 (+10.0) |" in norm  # 0.45/0.9, 0.54/0.9


def test_main_figure_bars_and_reference_lines(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    root = tmp_path / "runs"
    for pool, (bare, lv) in {"tinyclip_synth8": (0.40, 0.45), "tinyclip_synth14": (0.30, 0.28)}.items():
        tasks = ["shapes", "colors"]
        write_job(root, pool, "task_arithmetic", bare_overrides("task_arithmetic"), {t: bare for t in tasks})
        write_job(root, pool, "larv_task_arithmetic", [], {t: lv for t in tasks}, larv=larv_record())
        write_job(root, pool, "dummy", [], {t: 0.2 for t in tasks})
    for t, acc in {"shapes": 0.8, "colors": 0.6}.items():
        write_job(root, "tinyclip_synth14", "dummy", [f"modelpool.individual={t}"], {t: acc})
    result = tables.make_tables(root, tmp_path / "out")
    assert {p.suffix for p in result["figures"]["fig_main"]} == {".png", ".pdf"}
    fig = tables.main_figure(tables.tidy_rows(tables.collect(root)))
    assert [ax.get_title() for ax in fig.axes] == ["TinyCLIP, 8 tasks", "TinyCLIP, 14 tasks"]
    assert fig.axes[0].get_ylabel() == "average accuracy (%)"
    for ax, heights in zip(fig.axes, ([40.0, 45.0], [30.0, 28.0])):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["Task Arithmetic"]
        assert [c[0].get_height() for c in ax.containers] == pytest.approx(heights)  # bare, + LARV
        # zero-shot (20 %) and individual ((80 + 60) / 2 = 70 %) as horizontal lines
        assert [line.get_ydata()[0] for line in ax.get_lines()] == pytest.approx([20.0, 70.0])
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["zero-shot", "individual"]


def test_settings_sort_by_backbone_then_task_count():
    settings = [("TinyCLIP", 20), ("ViT-L/14", 8), ("TinyCLIP", 8), ("ViT-B/32", 14), ("TinyCLIP", 14), ("ViT-B/32", 8)]
    assert sorted(settings, key=tables.setting_order) == [
        ("ViT-B/32", 8), ("ViT-B/32", 14), ("ViT-L/14", 8), ("TinyCLIP", 8), ("TinyCLIP", 14), ("TinyCLIP", 20)]


def test_summary_csv_has_delta_and_normalized_per_job(tmp_path):
    root = tmp_path / "runs"
    pool = "clip-vit-base-patch32_TA8"
    write_job(root, pool, "isotropic_merging/iso_c", bare_overrides("iso_c"), uniform(0.45))
    write_job(root, pool, "larv_iso_c", (), uniform(0.54), larv=larv_record())
    write_job(root, pool, "larv_iso_c", ["method.gate=continuous"], uniform(0.36), larv=larv_record(gate="continuous"))
    for t in TASKS8:
        write_job(root, "CLIPVisionModelPool/clip-vit-base-patch32_individual", "dummy", [f"+individual_task={t}"],
                  {u: (0.9 if u == t else 0.1) for u in TASKS8}, extra={"individual_task": t})
    tables.make_tables(root, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert [(r["merger"], r["larv"], r["gate"]) for r in rows] == [
        ("iso_c", "False", ""), ("iso_c", "True", "tiered3"), ("iso_c", "True", "continuous")]
    bare, default, cont = rows
    assert (float(bare["accuracy"]), bare["delta_vs_bare"], float(bare["normalized"])) == (45.0, "", 50.0)
    assert float(default["delta_vs_bare"]) == pytest.approx(9.0)
    assert float(default["normalized"]) == pytest.approx(60.0)
    assert float(default["normalized_delta_vs_bare"]) == pytest.approx(10.0)
    assert float(cont["delta_vs_bare"]) == pytest.approx(-9.0)
