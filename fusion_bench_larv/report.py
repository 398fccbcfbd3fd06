"""What a LARV run records: the per-block table as JSON and CSV, and a plot of e, c, s and λ.

Files (written next to FusionBench's report, in the run's log dir):

- ``larv_layers.json``: the hyperparameters, the base merger and one row per block
  (index, prefix, e, c, z, s, tier, scale, zero_update).
- ``larv_layers.csv``: the rows only.
- ``larv_layers.png``: e, c, s and λ against depth (the paper's Figure 2 style, drawn by
  :func:`fusion_bench_larv.plots.layer_figure`, as the paper lab's ``fig_diagnostics``).

Each file is written with :mod:`fusion_bench_larv.atomic` (a temporary name, then a rename), so a
crash never leaves a half-written one; files get the umask's usual mode, like FusionBench's.
"""

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

from .atomic import atomic_write_bytes, atomic_write_text
from .plots import layer_figure, pyplot

log = logging.getLogger(__name__)

LAYER_FIELDS = ("index", "prefix", "e", "c", "z", "s", "tier", "scale", "zero_update")


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LAYER_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in LAYER_FIELDS})
    return buffer.getvalue()


def save_layer_report(record: Dict[str, Any], log_dir: Union[str, Path]) -> List[Path]:
    """Write larv_layers.{json,csv,png} into ``log_dir``; returns the paths."""
    log_dir = Path(log_dir)
    paths = [log_dir / "larv_layers.json", log_dir / "larv_layers.csv", log_dir / "larv_layers.png"]
    atomic_write_text(paths[0], json.dumps(record, indent=2))
    atomic_write_text(paths[1], rows_to_csv(record["blocks"]))
    base = record.get("base_method", {}).get("_target_", "base merger").rsplit(".", 1)[-1]
    fig = layer_figure({"": {f"LARV({record.get('gate')}) + {base}": record["blocks"]}},
                       title=f"LARV + {base}: gate={record.get('gate')}, source={record.get('source')}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    pyplot().close(fig)
    atomic_write_bytes(paths[2], buffer.getvalue())
    log.info("LARV per-block table written to %s", paths[0])
    return paths
