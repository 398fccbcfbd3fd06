"""The paper lab's figures: Figure 2 (per-block diagnostics), the main bars, Figure 3 (corruptions).

Figure 2 is drawn by :func:`fusion_bench_larv.plots.layer_figure`, the same function that draws
one run's ``larv_layers.png``; Figure 4 (the tier heatmap) by :func:`fusion_bench_larv.plots.tier_figure`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Sequence

from ..plots import layer_figure, pyplot
from .collect import (BACKBONE_ORDER, CORRUPTION_LABELS, Index, individual_average, match, merger_label,
                      mergers_present, setting_order, variant_crit)
from .experiments import CORRUPTIONS, MERGERS


def diagnostics_figure(blocks: Sequence[Dict[str, Any]]):
    """Figure 2: one row per backbone, columns e, c, s; one line per merger (default LARV runs)."""
    sel = [b for b in blocks if b["method_overrides"] in ("", None)]
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
        zs = idx.find("", task="average", kind="zeroshot", backbone=b, num_tasks=n)
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


def corruption_figure(rows: Sequence[Dict[str, Any]]):
    """Figure 3: per merger, bare vs +LARV average accuracy per corruption and their mean."""
    plt = pyplot()
    import numpy as np

    rob = [r for r in rows if r["kind"] == "robustness" and r["task"] == "average"]
    if not rob:
        return None
    corrs = [c for c in CORRUPTIONS if any(r["corruption"] == c for r in rob)]
    mergers = mergers_present(rob)
    fig, axes = plt.subplots(1, len(mergers), figsize=(4.5 * len(mergers), 3.4), squeeze=False)
    for ax, m in zip(axes[0], mergers):
        series = OrderedDict()
        for larv, name in ((False, "bare"), (True, "+ LARV")):
            crit = variant_crit(m, larv)
            vals = []
            for c in corrs:
                hit = [r for r in rob if r["corruption"] == c and all(match(r.get(k), v) for k, v in crit.items())]
                vals.append(100 * float(hit[0]["accuracy"]) if hit else np.nan)
            avg = np.nan if any(np.isnan(vals)) else float(np.mean(vals))
            series[name] = vals + [avg]
        x = np.arange(len(corrs) + 1)
        width = 0.38
        for k, (name, vals) in enumerate(series.items()):
            ax.bar(x + (k - 0.5) * width, vals, width, label=name)
        ax.set_xticks(x, [CORRUPTION_LABELS[c] for c in corrs] + ["Avg."], rotation=45, ha="right")
        ax.set_xlabel("corruption")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(merger_label(m))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
