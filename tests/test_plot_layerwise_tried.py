"""scripts/plot_layerwise_tried.py (issue #23's research builds as a figure): its table reader
against hand-written tables in both column layouts of docs/benchmark.md, its fact judgement
against the layer-wise report's own, and one run on the real document."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_bench_larv.synth.layerwise_facts import judge

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "plot_layerwise_tried.py"


def _load():
    spec = importlib.util.spec_from_file_location("plot_layerwise_tried", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOC = """# a document

## Layer-wise behaviour (issue #23)

| fact | what | threshold |
|---|---|---|
| 1 | retention | ≥ 0.97 |

| build | recipe change | individual | fact 1 retention | fact 2 loss (points) / given back | fact 3 margin (λ, β) | fact 4 TA ρ(e) / ρ(c) | TIES ρ(e) / ρ(c) | 8-task fidelity | build time |
|---|---|---:|---:|---|---|---|---|---|---|
| baseline (shipped) | none | 79.0 | 0.835 | 2.77 / 0.93 | +5.53 (0.5, 1) | −0.01 / −0.83 | +0.57 / −0.80 | holds | shipped |

| build | what changed (from AG) | zero-shot / individual | fact 1 retention (depth gain) | outside whole | fact 2 loss / given back | fact 3 margin (λ, β) | fact 4 TA ρ(e) / ρ(c); TIES | 8-task fidelity | build time |
|---|---|---|---|---|---|---|---|---|---|
| AX | broad, ft-only | 65.2 / 95.7 | **0.971** (+2.25) | 0.988 | 7.51 / 0.83 | +2.91 (0.3, 0.6) | +0.33 / −0.97; +0.58 / −0.95 | fails: SVD+3 (+1.6) | 4 min |
| AZ | AX on seed 1, hidden 96 | 66.0 / 97.2 | 0.970 (+1.60) | 0.982 | 8.22 / 0.83 | +1.56 (0.3, 0.4) | +0.52 / −0.92; +0.59 / −0.51 | holds | 3 min |

## Another section

| build | recipe change | individual | fact 1 retention | fact 2 loss (points) / given back | fact 3 margin (λ, β) | fact 4 TA ρ(e) / ρ(c) | TIES ρ(e) / ρ(c) | 8-task fidelity | build time |
|---|---|---:|---:|---|---|---|---|---|---|
| outside | none | 1 | 0.5 | 1 / 1 | +1 (1, 1) | 1 / 1 | 1 / 1 | holds | 1 |
"""


def test_reads_both_layouts_and_only_the_section():
    rows = _load().parse(DOC)
    assert [r["build"] for r in rows] == ["baseline (shipped)", "AX", "AZ"]
    base, ax, az = rows
    assert (base["seed"], base["retention"], base["forgetting"], base["recovered"], base["margin"]) == (0, 0.835, 2.77, 0.93, 5.53)
    assert (base["ta_rho_e"], base["ta_rho_c"], base["ties_rho_e"], base["ties_rho_c"], base["fidelity"]) == (-0.01, -0.83, 0.57, -0.80, True)
    assert (ax["retention"], ax["forgetting"], ax["margin"], ax["fidelity"]) == (0.971, 7.51, 2.91, False)
    assert (ax["ta_rho_e"], ax["ta_rho_c"], ax["ties_rho_e"], ax["ties_rho_c"]) == (0.33, -0.97, 0.58, -0.95)
    assert az["seed"] == 1 and az["margin"] == 1.56
    assert [r["hidden"] for r in rows] == [64, 64, 96]  # "hidden N" in a row, else the shipped width


def test_facts_met_agree_with_the_report():
    """The script's reading of facts 1-4 is the layer-wise report's judgement of the same numbers."""
    module = _load()
    for row in module.parse(DOC):
        single = {"target": {"retention": row["retention"]}, "depth_gain": 0.0,
                  "others": {"loss": row["forgetting"], "recovered": row["recovered"]}}
        merge = {"margin": row["margin"], "margin_se": 0.5}
        trends = {"task_arithmetic": {"e_rho": row["ta_rho_e"], "c_rho": row["ta_rho_c"]},
                  "ties_merging": {"e_rho": row["ties_rho_e"], "c_rho": row["ties_rho_c"]}}
        verdict = {f["fact"]: f["passed"] for f in judge(8, single, merge, trends)}
        expected = [n for n, keys in ((1, ["1"]), (2, ["2a", "2b"]), (3, ["3"]),
                                      (4, ["4-task_arithmetic-e", "4-task_arithmetic-c", "4-ties_merging-e", "4-ties_merging-c"]))
                    if all(verdict[k] for k in keys)]
        assert module.facts_met(row) == expected, row["build"]
    assert [module.facts_met(r) for r in module.parse(DOC)] == [[3], [1, 2, 3], [1, 2, 4]]


def test_refuses_a_document_without_the_section(tmp_path):
    with pytest.raises(ValueError, match="Layer-wise behaviour"):
        _load().parse("# nothing here\n")
    broken = DOC.replace("| 7.51 / 0.83 |", "| 7.51 |")  # AX's fact 2 cell without its second number
    with pytest.raises(ValueError, match="cannot read the table row '\\| AX"):
        _load().parse(broken)
    doc = tmp_path / "empty.md"
    doc.write_text("## Layer-wise behaviour\n\nno tables\n", encoding="utf-8")
    run = subprocess.run([sys.executable, str(SCRIPT), "--doc", str(doc), "--out", str(tmp_path / "f")],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "no build table" in run.stderr
    assert not list(tmp_path.glob("f.*"))


def test_the_real_document(tmp_path):
    """Every row of the real section's build tables is read (counted here from the raw lines)."""
    text = (ROOT / "docs" / "benchmark.md").read_text(encoding="utf-8")
    section = text[text.index("## Layer-wise behaviour"):]
    section = section[:section.index("\n## ", 1)]
    expected, in_table = 0, False
    for line in section.splitlines():
        if line.startswith("| build |"):
            in_table = "fact 3 margin (" in line and "8-task fidelity" in line
        elif in_table and line.startswith("| ") and not line.startswith("|---"):
            expected += 1
        elif not line.startswith("|"):
            in_table = False
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "tried")],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert f"\n{expected} builds;" in run.stdout and expected >= 60
    assert (tmp_path / "tried.png").stat().st_size > 10_000 and (tmp_path / "tried.pdf").exists()
