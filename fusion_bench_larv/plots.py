"""LARV's figures, each drawn by one function: per-block diagnostics, and a heatmap over a grid.

* :func:`layer_figure`: ``e``, ``c``, ``s`` (and ``lambda``) against block depth, one line per
  series, one row of panels per group: the paper's Figure 2 style. ``report.save_layer_report``
  draws one run with it, the paper lab's ``fig_diagnostics`` one row per backbone and one line per
  merger.
* :func:`tier_figure`: a heatmap of a value over a 2-D grid (the paper's Figure 4: Δ accuracy over
  middle × deep tier values, colour map centred at 0), used by the sweep callback and the lab;
  :func:`heatmap` draws one such grid on an axis (also the lab's Figure 5).
* :func:`save_figure`: PNG and PDF, each written atomically.
"""

import io
import math
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .atomic import atomic_write_bytes

__all__ = ["PANELS", "MISSING", "layer_figure", "heatmap", "tier_figure", "save_figure", "pyplot"]

MISSING = "—"
#: per-block quantity -> its axis label
PANELS: Dict[str, str] = {
    "e": r"$e_\ell$ (effective-rank contrast)",
    "c": r"$c_\ell$ (commutator coefficient)",
    "s": r"$s_\ell$ (composite score)",
    "scale": r"$\lambda_\ell$ (scale)",
}


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite number (``None``, ``""`` and NaN are not)."""
    try:
        return x is not None and x != "" and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def layer_figure(groups: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
                 quantities: Sequence[str] = ("e", "c", "s", "scale"), title: str = ""):
    """Per-block quantities against depth: one row of panels per group, one line per series.

    Args:
        groups: group title (``""`` for none) -> series label -> per-block rows, each with
            ``index`` and the ``quantities`` (missing or non-finite values are left out).
        quantities: the panels of a row, keys of :data:`PANELS`.
        title: the figure's title.

    Returns:
        The matplotlib Figure (axes in row-major order).
    """
    plt = pyplot()
    fig, axes = plt.subplots(len(groups), len(quantities), figsize=(4.0 * len(quantities), 3.2 * len(groups)),
                             squeeze=False, constrained_layout=True)
    for i, (group, series) in enumerate(groups.items()):
        for j, key in enumerate(quantities):
            ax = axes[i][j]
            for label, rows in series.items():
                points = sorted((int(r["index"]), float(r[key])) for r in rows if finite(r.get(key)))
                ax.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3, label=label)
            ax.set_xlabel(r"block $\ell$")
            ax.set_ylabel(PANELS[key])
            if group:
                ax.set_title(f"{group}: {key}")
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


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


def save_figure(fig, out: Path, name: str, png_metadata: Optional[Dict[str, str]] = None) -> List[Path]:
    """Save ``fig`` as ``<name>.png`` and ``<name>.pdf``; ``png_metadata`` becomes PNG text chunks."""
    plt = pyplot()
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=150, **({"metadata": png_metadata} if ext == "png" and png_metadata else {}))
        paths.append(atomic_write_bytes(p, buffer.getvalue()))
    plt.close(fig)
    return paths
