"""Heatmaps over a 2-D grid: the paper's Figure 4 (Δ accuracy over tier values) and the sweep's.

* :func:`tier_figure`: one grid as a figure (colour map centred at 0 for Δ, sequential for plain
  values), used by the sweep callback (:mod:`fusion_bench_larv.runs.summary`) and the paper lab's
  tables;
* :func:`heatmap`: one grid drawn on an axis, every value written in its cell (also the lab's
  Figure 5).
"""

import textwrap
from typing import Optional, Sequence

from ..plots import MISSING, pyplot

__all__ = ["heatmap", "tier_figure", "tier_label"]


def tier_label(x: float) -> str:
    """Tier values with at least one decimal (1.0, 1.25)."""
    return f"{x:.1f}" if round(x, 1) == x else f"{x:g}"


def heatmap(ax, data, xlabels: Sequence[str], ylabels: Sequence[str], bound: Optional[float] = None, *,
            cmap: Optional[str] = None, origin: str = "upper"):
    """Draw ``data`` (rows × columns; NaN shown as "—") on ``ax`` with every value written in its cell.

    ``bound``: a colour map centred at 0 on ``[-bound, bound]`` (``TwoSlopeNorm``, default
    ``RdBu_r``: red = positive), values as ``+1.2``; ``None``: a sequential colour map (default
    ``viridis``) over the finite values, as ``1.2``. Returns the image (for a colour bar).
    """
    import numpy as np
    from matplotlib.colors import Normalize, TwoSlopeNorm

    data = np.asarray(data, dtype=float)
    finite = data[np.isfinite(data)]
    if bound is not None:
        bound = max(float(bound), 1e-6)
        cmap, norm, fmt = cmap or "RdBu_r", TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound), "{:+.1f}"
    else:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        cmap, norm, fmt = cmap or "viridis", Normalize(vmin=low, vmax=high if high > low else low + 1e-6), "{:.1f}"
    im = ax.imshow(data, cmap=cmap, norm=norm, origin=origin)
    ax.set_xticks(range(len(xlabels)), list(xlabels))
    ax.set_yticks(range(len(ylabels)), list(ylabels))
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            value = data[i, j]
            # white on the dark ends of the colour map (both ends of a diverging map, the low end of viridis)
            shade = float(norm(value)) if np.isfinite(value) else 0.5
            dark = shade > 0.8 or shade < 0.2 if bound is not None else shade < 0.35
            ax.text(j, i, MISSING if not np.isfinite(value) else fmt.format(value), ha="center",
                    va="center", fontsize=7, color="white" if dark else "black")
    return im


def tier_figure(mids, deeps, matrix, title: str, *, ylabel: str = "middle tier scale",
                xlabel: str = "deep tier scale", value_label: str = "Δ accuracy (points)", centered: bool = True):
    """Figure 4: a heatmap of ``matrix[i][j]`` over rows ``mids`` (y) and columns ``deeps`` (x).

    By default a Δ accuracy heatmap over (middle, deep) tier values, colour map centred at 0
    (red = gain). ``centered=False`` draws plain values (e.g. average accuracy) with a sequential
    colour map. Missing cells (``None``) are shown as "—". The drawn matrix is the figure's
    ``axes[0].images[0].get_array()``.
    """
    plt = pyplot()
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in line] for line in matrix], dtype=float)
    finite = data[np.isfinite(data)]
    bound = (float(np.abs(finite).max()) if finite.size else 1.0) if centered else None
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 + 0.9 * len(deeps)), max(3.2, 1.4 + 0.8 * len(mids))))
    im = heatmap(ax, data, [tier_label(d) for d in deeps], [tier_label(m) for m in mids], bound, origin="lower")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # about 12 characters of 8-pt text per inch of figure
    ax.set_title(textwrap.fill(title, width=max(48, int(12 * fig.get_figwidth()))), fontsize=8)
    fig.colorbar(im, ax=ax, label=value_label)
    fig.tight_layout()
    return fig
