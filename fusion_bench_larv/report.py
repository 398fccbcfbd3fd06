"""What a LARV run records: the per-block table as JSON and CSV, and a plot of e, c, s and λ.

Files (written next to FusionBench's report, in the run's log dir):

- ``larv_layers.json``: the hyperparameters, the base merger and one row per block
  (index, prefix, e, c, z, s, tier, scale, zero_update).
- ``larv_layers.csv``: the rows only.
- ``larv_layers.png``: e, c, s and λ against depth (the paper's Figure 2 style).

Each file is written with :mod:`fusion_bench_larv.atomic` (a temporary name, then a rename), so a
crash never leaves a half-written one; files get the umask's usual mode, like FusionBench's.
"""

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

from .atomic import atomic_write_bytes

log = logging.getLogger(__name__)

LAYER_FIELDS = ("index", "prefix", "e", "c", "z", "s", "tier", "scale", "zero_update")
PANELS = (
    ("e", "effective-rank contrast $e_\\ell$"),
    ("c", "commutator coefficient $c_\\ell$"),
    ("s", "composite score $s_\\ell$"),
    ("scale", "scale $\\lambda_\\ell$"),
)


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LAYER_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in LAYER_FIELDS})
    return buffer.getvalue()


def plot_layers(series: Mapping[str, Sequence[Mapping[str, Any]]], title: str = ""):
    """A 4-panel figure (e, c, s, λ vs block depth), one line per entry of ``series``.

    ``series`` maps a label (e.g. the base merger) to its per-block rows, so the same function
    draws one run or the paper's Figure 2 (one curve per method). Returns the matplotlib Figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.0 * len(PANELS), 3.2), constrained_layout=True)
    for ax, (key, label) in zip(axes, PANELS):
        for name, rows in series.items():
            xs = [r["index"] for r in rows if r.get(key) is not None]
            ys = [r[key] for r in rows if r.get(key) is not None]
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.set_xlabel("block (depth)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if len(series) > 1 or title:
        axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def save_layer_report(record: Dict[str, Any], log_dir: Union[str, Path]) -> List[Path]:
    """Write larv_layers.{json,csv,png} into ``log_dir``; returns the paths."""
    log_dir = Path(log_dir)
    paths = [log_dir / "larv_layers.json", log_dir / "larv_layers.csv", log_dir / "larv_layers.png"]
    atomic_write_bytes(paths[0], json.dumps(record, indent=2).encode())
    atomic_write_bytes(paths[1], rows_to_csv(record["blocks"]).encode())
    base = record.get("base_method", {}).get("_target_", "base merger").rsplit(".", 1)[-1]
    fig = plot_layers({f"LARV({record.get('gate')}) + {base}": record["blocks"]},
                      title=f"LARV + {base}: gate={record.get('gate')}, source={record.get('source')}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    atomic_write_bytes(paths[2], buffer.getvalue())
    log.info("LARV per-block table written to %s", paths[0])
    return paths
