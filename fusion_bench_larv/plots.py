"""LARV's per-block figure, and the one way figures are saved.

* :func:`layer_figure`: ``e``, ``c``, ``s`` (and ``lambda``) against block depth, one line per
  series, one row of panels per group: the paper's Figure 2 style. ``report.save_layer_report``
  draws one run with it, the paper lab's ``fig_diagnostics`` one row per backbone and one line per
  merger.
* :func:`save_figure`: PNG and PDF, each written atomically.

The grid heatmaps (the paper's Figure 4 over tier values, the sweep's heatmap) are run
infrastructure: :mod:`fusion_bench_larv.runs.heatmap`.
"""

import io
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .atomic import atomic_write_bytes

__all__ = ["PANELS", "MISSING", "layer_figure", "save_figure", "pyplot", "finite"]

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
