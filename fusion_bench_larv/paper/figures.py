"""The paper lab's figures: Figure 2 (per-block diagnostics), the main bars, Figures 3 and 5 (corruptions).

Figure 2 is drawn by :func:`fusion_bench_larv.plots.layer_figure`, the same function that draws
one run's ``larv_layers.png``; Figure 4 (the tier heatmap) by :func:`fusion_bench_larv.runs.heatmap.tier_figure`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Sequence

from ..plots import layer_figure, pyplot
from ..runs.heatmap import heatmap
from .collect import (Index, individual_average, match, merger_label, mergers_present, setting_order,
                      variant_crit)
from .labels import BACKBONE_ORDER, CORRUPTION_LABELS, describe_modelpool
from .experiments import CLEAN, CORRUPTIONS, MERGERS


def diagnostics_figure(blocks: Sequence[Dict[str, Any]]):
    """Figure 2: one row per backbone, columns e, c, s; one line per merger (default LARV runs of
    the CLIP task settings; the robustness and generalization pools' merges are left out)."""
    sel = [b for b in blocks if b["method_overrides"] in ("", None)
           and describe_modelpool(b["modelpool"])["kind"] == "clip"]
    if not sel:
        return None
    backbones = [bb for bb in BACKBONE_ORDER if any(b["backbone"] == bb for b in sel)]
    backbones += sorted({b["backbone"] for b in sel} - set(backbones))
    groups: Dict[str, Dict[str, list]] = OrderedDict()
    for bb in backbones:
        runs: Dict[tuple, list] = OrderedDict()
        for r in sel:
            if r["backbone"] == bb:
                runs.setdefault((r["merger"], r["num_tasks"], r["run_dir"]), []).append(r)
        # one series per merger (the first job found for it on this backbone)
        per_merger: Dict[str, list] = OrderedDict()
        for (merger, _, _), rs in sorted(runs.items(), key=lambda kv: (list(MERGERS).index(kv[0][0])
                                         if kv[0][0] in MERGERS else 99, kv[0][1] or 0)):
            per_merger.setdefault(merger_label(merger), [dict(r, index=r["block"]) for r in rs])
        groups[bb] = per_merger
    return layer_figure(groups, quantities=("e", "c", "s"))


def main_figure(rows: Sequence[Dict[str, Any]]):
    """The main tables as bars: per (backbone, task count), each merger bare vs + LARV (shipped
    defaults), with the zero-shot and individual fine-tuned averages as dashed lines."""
    plt = pyplot()
    import numpy as np

    clip = [r for r in rows if r["kind"] == "clip" and r["task"] == "average"]
    settings = sorted({(r["backbone"], r["num_tasks"]) for r in clip}, key=setting_order)
    if not settings:
        return None
    idx = Index(rows)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6), squeeze=False, sharey=True)
    for ax, (b, n) in zip(axes[0], settings):
        base = dict(kind="clip", backbone=b, num_tasks=n)
        mergers = mergers_present(clip, backbone=b, num_tasks=n)
        x = np.arange(len(mergers))
        for k, (larv, name) in enumerate(((False, "bare"), (True, "+ LARV"))):
            vals = [idx.value("", **base, **variant_crit(m, larv)) for m in mergers]
            ax.bar(x + (k - 0.5) * 0.38, [np.nan if v is None else 100 * v for v in vals], 0.38, label=name)
        zs = idx.find(task="average", kind="zeroshot", backbone=b, num_tasks=n)
        if zs:
            ax.axhline(100 * float(zs[0]["accuracy"]), color="grey", ls="--", lw=1, label="zero-shot")
        ind = individual_average(idx, "", base) if any(r["kind"] == "individual" for r in rows) else None
        if ind is not None:
            ax.axhline(100 * ind, color="black", ls=":", lw=1, label="individual")
        ax.set_xticks(x, [merger_label(m) for m in mergers], rotation=45, ha="right")
        ax.set_title(f"{b}, {n} tasks")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("average accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _robustness_rows(rows: Sequence[Dict[str, Any]], backbone=None):
    return [r for r in rows if r["kind"] == "robustness" and (backbone is None or r["backbone"] == backbone)]


def _split_value(rob, crit: Dict[str, Any], split: str, task: str = "average"):
    hit = [r for r in rob if r["corruption"] == split and r["task"] == task and all(match(r.get(k), v) for k, v in crit.items())]
    return 100 * float(hit[0]["accuracy"]) if hit else float("nan")


def corruption_figure(rows: Sequence[Dict[str, Any]], backbone=None):
    """Figure 3: per merger, bare vs +LARV average accuracy per corruption and their mean (after
    the clean split, where it was evaluated: the offline suite)."""
    plt = pyplot()
    import numpy as np

    rob = _robustness_rows(rows, backbone)
    merges = [r for r in rob if r["merger"] not in ("zeroshot", "individual")]
    if not merges:
        return None
    splits = [c for c in (CLEAN, *CORRUPTIONS) if any(r["corruption"] == c for r in merges)]
    corrs = [c for c in splits if c != CLEAN]
    mergers = mergers_present(merges)
    cols = min(3, len(mergers))
    fig, axes = plt.subplots(-(-len(mergers) // cols), cols, figsize=(4.8 * cols, 3.4 * -(-len(mergers) // cols)),
                             squeeze=False)
    for ax in list(axes.flat)[len(mergers):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, mergers):
        series = OrderedDict()
        for larv, name in ((False, "bare"), (True, "+ LARV")):
            vals = [_split_value(merges, variant_crit(m, larv), c) for c in splits]
            corrupted = [v for c, v in zip(splits, vals) if c != CLEAN]
            avg = np.nan if not corrupted or any(np.isnan(corrupted)) else float(np.mean(corrupted))
            series[name] = vals + [avg]
        x = np.arange(len(splits) + 1)
        width = 0.38
        for k, (name, vals) in enumerate(series.items()):
            ax.bar(x + (k - 0.5) * width, vals, width, label=name)
        drawn = [v for vals in series.values() for v in vals if np.isfinite(v)]
        if drawn:  # bars start near the lowest value, so that points of difference show
            ax.set_ylim(max(0.0, 10 * np.floor(min(drawn) / 10) - 5), min(100.0, max(drawn) + 4))
        ax.set_xticks(x, [CORRUPTION_LABELS[c] for c in splits] + ["Avg."], rotation=45, ha="right")
        if CLEAN in splits and corrs:
            ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("corruption")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(merger_label(m))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def corruption_delta_figure(rows: Sequence[Dict[str, Any]], backbone=None):
    """Figure 5: per merger, a heatmap of Δ accuracy (+ LARV − bare, points) over tasks (rows, then
    their average) × corruptions (columns, then their average); one colour scale for all panels,
    centred at 0, blue = LARV better, red = worse (the paper's caption of Figure 5)."""
    plt = pyplot()
    import numpy as np

    merges = [r for r in _robustness_rows(rows, backbone) if r["merger"] not in ("zeroshot", "individual")]
    corrs = [c for c in CORRUPTIONS if any(r["corruption"] == c for r in merges)]
    if not merges or not corrs:
        return None
    tasks = list(dict.fromkeys(r["task"] for r in merges if r["task"] != "average"))
    mergers = mergers_present(merges)
    grids = []
    for m in mergers:
        delta = np.array([[_split_value(merges, variant_crit(m, True), c, t) - _split_value(merges, variant_crit(m, False), c, t)
                           for c in corrs] for t in tasks + ["average"]])
        grids.append(np.column_stack([delta, delta.mean(axis=1)]))
    cols = min(3, len(mergers))
    rows_n = -(-len(mergers) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(cols * (0.45 * (len(corrs) + 1) + 1.3) + 1.0,
                                                    (0.42 * (len(tasks) + 1) + 1.3) * rows_n),
                             squeeze=False, constrained_layout=True)
    bound = max([float(np.nanmax(np.abs(g))) for g in grids if np.isfinite(g).any()] + [1e-6])
    for ax, m, grid in zip(axes.flat, mergers, grids):
        im = heatmap(ax, grid, [CORRUPTION_LABELS[c] for c in corrs] + ["Avg."], tasks + ["Avg."], bound, cmap="RdBu")
        ax.axhline(len(tasks) - 0.5, color="black", lw=0.8)  # the averages apart from the cells
        ax.axvline(len(corrs) - 0.5, color="black", lw=0.8)
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_title(merger_label(m), fontsize=9)
    for ax in list(axes.flat)[len(mergers):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="Δ accuracy, + LARV − bare (points)")
    return fig
