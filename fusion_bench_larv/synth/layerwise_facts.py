"""The facts of ``synth layerwise`` against issue #23's thresholds, and the report files.

:mod:`fusion_bench_larv.synth.layerwise` measures; this module holds the grids (and the choice
on one, :func:`_pick`) and the thresholds, judges the measured values (:func:`judge`) and writes ``layerwise_<N>tasks_seed<S>.{json,md}``
atomically (:func:`write_report`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text

__all__ = ["GRID", "SINGLE_ALPHA", "SINGLE_BETA", "MERGERS", "TREND_MERGERS", "THRESHOLDS", "judge", "paired_margin_se", "check_out",
           "report_paths", "format_markdown", "write_report"]

#: the grid of task arithmetic's λ and of LiNeS's β (LiNeS's paper: 0.1 … 1.0)
GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))
#: the single-task ramp of fact 1 (LiNeS's α = 0.1, β = 0.9; parameters outside the blocks: α)
SINGLE_ALPHA, SINGLE_BETA = 0.1, 0.9
#: the paper's six mergers (Figure 2), keys of ``defaults.BASE_MERGERS``
MERGERS = ("simple_average", "task_arithmetic", "ties_merging", "tsvm", "iso_c", "iso_cts")
#: mergers whose trends fact 4 requires at 8 tasks
TREND_MERGERS = ("task_arithmetic", "ties_merging")
#: the issue's thresholds (#23)
THRESHOLDS = {
    "retention_min": 0.97,
    "forgetting_min_points": 6.0,
    "recovered_min": 0.75,
    "lines_margin_8": (2.0, 6.0),
    "lines_margin_more_min": 1.0,
    "e_rho_min": 0.5,
    "c_rho_max": -0.5,
}


def _mean(values) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def _pick(curve: Mapping[float, float]) -> float:
    """The grid value with the best mean validation accuracy; ties (equal to 1e-9, so that the
    summation order of equal accuracies cannot break them) go to the smaller value."""
    best = max(round(acc, 9) for acc in curve.values())
    return min(v for v, acc in curve.items() if round(acc, 9) == best)


def paired_margin_se(hits_a, hits_b) -> float:
    """Standard error (points) of the mean over tasks of ``acc_a − acc_b``, the two models scored on
    the same test images (``{task: bool per image}`` each): ``100 / T · sqrt(Σ_t s_t² / n_t)``, s_t²
    the sample variance (ddof 1) of the per-image difference of task t. The models are held fixed,
    so the choice of λ and β on validation is not part of it."""
    terms = []
    for task, a in hits_a.items():
        diff = np.asarray(a, dtype=np.float64) - np.asarray(hits_b[task], dtype=np.float64)
        terms.append(float(diff.var(ddof=1)) / len(diff) if len(diff) > 1 else float("nan"))
    return 100.0 * math.sqrt(math.fsum(terms)) / len(terms)


def _interval95(merge: dict) -> str:
    """Fact 3's margin ± 1.96 standard errors, as ``"+a to +b"``."""
    margin, se = merge["margin"], merge["margin_se"]
    return f"{margin - 1.96 * se:+.2f} to {margin + 1.96 * se:+.2f}"


def check_out(out: Union[str, Path]) -> Path:
    """The output folder: refused (``ValueError`` naming ``out``) if it is an existing file or lies
    under one. Nothing is created here."""
    out = Path(out).expanduser()
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"out: {str(out)!r} cannot be a folder: {str(parent)!r} is a file")
    return out




def judge(n_tasks: int, single: dict, merge: dict, trends: dict) -> List[dict]:
    th = THRESHOLDS
    facts = []

    def add(key, what, threshold, value, passed, fmt="{:.3f}"):
        facts.append({"fact": key, "what": what, "threshold": threshold, "value": value,
                      "shown": "n/a" if value is None else fmt.format(value), "passed": passed})

    retention = single["target"]["retention"]
    add("1", "single task: ramped / fine-tuned target accuracy (mean over tasks)", f">= {th['retention_min']}",
        retention, retention >= th["retention_min"])
    add("1-depth", "single task: ramped minus reversed-ramp target accuracy (points; depth controls below)",
        "reported", single["depth_gain"], None, "{:+.2f}")
    loss, recovered = single["others"]["loss"], single["others"]["recovered"]
    add("2a", "forgetting: zero-shot minus fine-tuned accuracy on the other tasks (points)",
        f">= {th['forgetting_min_points']}", loss, loss >= th["forgetting_min_points"], "{:.2f}")
    add("2b", "share of that loss the ramp gives back", f">= {th['recovered_min']}", recovered,
        recovered is not None and recovered >= th["recovered_min"])
    margin = merge["margin"]
    if n_tasks == 8:
        lo, hi = th["lines_margin_8"]
        add("3", "LiNeS minus task arithmetic, test (points; λ, β chosen on val)", f"{lo} to {hi}", margin,
            lo <= margin <= hi, "{:+.2f}")
    else:
        add("3", "LiNeS minus task arithmetic, test (points; λ, β chosen on val)",
            f">= {th['lines_margin_more_min']}", margin, margin >= th["lines_margin_more_min"], "{:+.2f}")
    add("3-se", "fact 3's margin: standard error over the paired test images (λ, β held)",
        f"reported; 95 %: {_interval95(merge)}", merge["margin_se"], None, "±{:.2f}")
    for merger, values in trends.items():
        judged = n_tasks == 8 and merger in TREND_MERGERS
        for diag, key, bound in (("e", "e_rho", "e_rho_min"), ("c", "c_rho", "c_rho_max")):
            rho = values[key]
            if judged:
                ok = rho is not None and (rho >= th[bound] if diag == "e" else rho <= th[bound])
                threshold = (">= " if diag == "e" else "<= ") + str(th[bound])
            else:
                ok, threshold = None, "reported"
            add(f"4-{merger}-{diag}", f"Spearman(depth, {diag}_ℓ), {merger}", threshold, rho, ok, "{:+.2f}")
    return facts




def report_paths(out: Union[str, Path], num_tasks: int, seed: int) -> Dict[str, Path]:
    stem = f"layerwise_{num_tasks}tasks_seed{seed}"
    out = Path(out)
    return {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}


def format_markdown(result: dict, command: Optional[str] = None) -> str:
    """The report: facts against thresholds, then the numbers behind them."""
    tasks, single, merge, trends = result["tasks"], result["single_task"], result["lines_vs_task_arithmetic"], result["trends"]
    mark = {True: "pass", False: "**fail**", None: "(reported)"}
    lines = [f"# Layer-wise behaviour: {result['num_tasks']} tasks, seed {result['seed']}", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    recipe = result["recipe"]
    lines += [f"Assets: `{Path(result['assets']).name}` (shipped weights: {', '.join(result['shipped']) or 'none'}); "
              f"recipe: {json.dumps(recipe, sort_keys=True)}; {result['num_blocks']} blocks; "
              f"{result['seconds']:.0f} s on {result['threads']} thread(s).", ""]
    lines += ["| fact | what | threshold | measured | |", "|---|---|---|---:|---|"]
    lines += [f"| {f['fact']} | {f['what']} | {f['threshold']} | {f['shown']} | {mark[f['passed']]} |" for f in result["facts"]]
    lines += ["", "## Facts 1 and 2: single tasks (test accuracy, %)", "",
              "| task | zero-shot | fine-tuned | ramped | zero-shot, other tasks | fine-tuned, other tasks | ramped, other tasks |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for t in tasks:
        other = lambda acc: _mean(acc[s] for s in tasks if s != t)
        lines.append(f"| {t} | {single['zero_shot'][t]:.1f} | {single['finetuned'][t][t]:.1f} | {single['ramped'][t][t]:.1f} | "
                     f"{other(single['zero_shot']):.1f} | {other(single['finetuned'][t]):.1f} | {other(single['ramped'][t]):.1f} |")
    tg, ot = single["target"], single["others"]
    lines.append(f"| **mean** | {_mean(single['zero_shot'].values()):.1f} | {tg['finetuned']:.1f} | {tg['ramped']:.1f} | "
                 f"{ot['zero_shot']:.1f} | {ot['finetuned']:.1f} | {ot['ramped']:.1f} |")
    lines += ["", f"Ramp λ_ℓ = {SINGLE_ALPHA} + {SINGLE_BETA} ℓ/(L−1), {SINGLE_ALPHA} outside the blocks.", ""]
    lines += _controls_markdown(tasks, single)
    lines += ["## Fact 3: LiNeS against task arithmetic (mean accuracy, %)", "",
              f"LiNeS α = {merge['alpha']:.4f}. Validation curves (λ for task arithmetic, β for LiNeS):", "",
              "| | " + " | ".join(f"{v:g}" for v in GRID) + " | chosen | val | test |",
              "|---|" + "---:|" * (len(GRID) + 3)]
    for name in ("task_arithmetic", "lines"):
        m = merge[name]
        curve = " | ".join(f"{m['val_curve'][v]:.1f}" for v in GRID)
        lines.append(f"| {name} | {curve} | {m['chosen']:g} | {m['val']:.1f} | {m['test_mean']:.1f} |")
    lines += ["", f"Margin (test): {merge['margin']:+.2f} points; standard error {merge['margin_se']:.2f} over the "
              f"paired test images with λ and β held (95 %: {_interval95(merge)}).", "",
              "## Fact 4: LARV's diagnostics against depth (merged update, FusionBench's CLIP settings)", "",
              "| merger | test mean | ρ(depth, e) | ρ(depth, c) | e_ℓ, ℓ = 0 … L−1 | c_ℓ |", "|---|---:|---:|---:|---|---|"]
    for merger, v in trends.items():
        lines.append(f"| {merger} | {v['test_mean']:.1f} | {_rho(v['e_rho'])} | {_rho(v['c_rho'])} | "
                     + " ".join(f"{x:.3f}" for x in v["e"]) + " | " + " ".join(f"{x:.3f}" for x in v["c"]) + " |")
    if "rank_profile" in result:
        lines += [""] + _ranks_markdown(result["rank_profile"], trends.get("task_arithmetic"))
    return "\n".join(lines) + "\n"


def _rho(value: Optional[float]) -> str:
    """A Spearman correlation as the report shows it ("n/a" where it is undefined)."""
    return "n/a" if value is None else f"{value:+.2f}"


def _ranks_markdown(ranks: dict, task_arithmetic: Optional[dict]) -> List[str]:
    """What sets task arithmetic's e: the effective ranks behind it, block by block."""
    ta = task_arithmetic["e"] if task_arithmetic else [math.nan] * len(ranks["pretrained"])
    lines = ["### What sets task arithmetic's e: effective ranks by block", "",
             "Means over each block's diagnostic matrices. Task arithmetic's e_ℓ is r_eff(W0) / r_eff(Σ τ_t) "
             "(the mean of the ratios); one task's own contrast r_eff(W0) / r_eff(τ_t), averaged over tasks, is "
             f"LARV's `source: task_vectors` e (ρ(depth) {_rho(ranks['e_tasks_rho'])}).", "",
             "| block | r_eff(W0) | r_eff(τ_t), mean over tasks | r_eff(Σ τ_t) | e, task arithmetic | e, each task's own update |",
             "|---:|---:|---:|---:|---:|---:|"]
    for i, (r0, rt, rs, et) in enumerate(zip(ranks["pretrained"], ranks["task"], ranks["sum"], ranks["e_tasks"])):
        lines.append(f"| {i} | {r0:.2f} | {rt:.2f} | {rs:.2f} | {ta[i]:.3f} | {et:.3f} |")
    if ranks.get("by_matrix"):
        lines += ["", "### Task arithmetic's e by matrix kind", "",
                  "e = r_eff(W0) / r_eff(Σ τ_t) of one kind of matrix in every block; the mean of a block's kinds "
                  "is task arithmetic's e_ℓ above.", "",
                  "| matrix | ρ(depth, e) | e_ℓ, ℓ = 0 … L−1 | r_eff(W0) | r_eff(τ_t), mean over tasks | r_eff(Σ τ_t) |",
                  "|---|---:|---|---|---|---|"]
        for kind, v in ranks["by_matrix"].items():
            lines.append(f"| {kind} | {_rho(v['e_rho'])} | " + " | ".join(
                " ".join(f"{x:{fmt}}" for x in v[key])
                for key, fmt in (("e", ".2f"), ("pretrained", ".1f"), ("task", ".1f"), ("sum", ".1f"))) + " |")
    return lines


CONTROL_LABELS = {
    "reversed": "reversed ramp",
    "uniform": f"uniform {SINGLE_ALPHA + SINGLE_BETA / 2:g}",
    "deep_half": "deep half only",
    "shallow_half": "shallow half only",
    "outside_whole": "ramp, outside whole",
    "patch_whole": "ramp, patch embedding whole",
}


def _controls_markdown(tasks, single: dict) -> List[str]:
    """Fact 1's depth controls: each tower's own accuracy with its update rescaled in other ways."""
    controls = single["depth_controls"]
    lines = ["### Where a task lives: depth controls (own-task test accuracy, %)", "",
             "The same update with its blocks scaled otherwise (outside the blocks "
             f"{SINGLE_ALPHA} in each): the reversed ramp λ_ℓ = {SINGLE_ALPHA + SINGLE_BETA:g} − {SINGLE_BETA} ℓ/(L−1), "
             "the ramp's mean in every block, or one half of the blocks kept whole and the other removed; "
             "last, the ramp with the parameters outside the blocks (embeddings, pre- and post-norm) "
             f"kept whole instead of scaled by {SINGLE_ALPHA}, and the ramp with only the patch embedding "
             "kept whole.", "",
             "| task | fine-tuned | ramped | " + " | ".join(CONTROL_LABELS[c] for c in controls) + " |",
             "|---|---:|---:|" + "---:|" * len(controls)]
    for t in tasks:
        lines.append(f"| {t} | {single['finetuned'][t][t]:.1f} | {single['ramped'][t][t]:.1f} | "
                     + " | ".join(f"{c['own'][t]:.1f}" for c in controls.values()) + " |")
    tg = single["target"]
    lines.append(f"| **mean** | {tg['finetuned']:.1f} | {tg['ramped']:.1f} | "
                 + " | ".join(f"{c['mean']:.1f}" for c in controls.values()) + " |")
    lines += ["", f"Depth gain (ramped − reversed ramp, mean): {single['depth_gain']:+.2f} points.", ""]
    return lines


def write_report(result: dict, out: Union[str, Path], command: Optional[str] = None) -> Dict[str, Path]:
    """Write ``layerwise_<N>tasks_seed<S>.{json,md}`` under ``out`` (atomically); return the paths."""
    out = check_out(out)
    paths = report_paths(out, result["num_tasks"], result["seed"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths["json"], {**result, "command": command}, indent=1, default=_json_default)
    atomic_write_text(paths["md"], format_markdown(result, command))
    return paths


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
