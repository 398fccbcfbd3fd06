#!/usr/bin/env python
"""Draw the research builds of docs/benchmark.md's layer-wise section against issue #23's facts.

    python scripts/plot_layerwise_tried.py [--doc docs/benchmark.md] [--out docs/results/layerwise/tried]

Reads every table of the section "Layer-wise behaviour" whose columns include fact 1's retention
and fact 3's margin (one row per 8-task build), so the figure and the tables cannot disagree: add
a row to a table and draw again. Writes OUT.png and OUT.pdf, three panels:

* fact 1's retention against fact 3's margin (the issue's box: retention >= 0.97, margin +2 to +6),
  then the same for the builds with retention >= 0.94 only (a zoom on fact 1's threshold);
* fact 2's forgetting against task arithmetic's rho(e) (the issue's box: >= 6 points, >= 0.5).

Colour is the seed, a filled marker a build whose 8-task fidelity checks hold, a square a build
whose tower is wider than the shipped 64 ("hidden N" in its row). It prints each
build's values and which facts it meets (fact 2's "given back" and fact 4's rho(c) and TIES are
printed, not drawn).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
SECTION = ("## Layer-wise behaviour", "\n## ")
NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
SEED = re.compile(r"\bseed (\d+)")
HIDDEN = re.compile(r"\bhidden (\d+)")  # a tower width other than the shipped one
SHIPPED_HIDDEN = 64
LABEL = re.compile(r"[A-Z]{1,2}\b|shipped|baseline \(shipped\)")  # a build's id, where it has one

sys.path.insert(0, str(ROOT))
from fusion_bench_larv.synth.layerwise_facts import THRESHOLDS, judge  # noqa: E402  (issue #23's, as the report judges them)

RETENTION_MIN, FORGET_MIN = THRESHOLDS["retention_min"], THRESHOLDS["forgetting_min_points"]
(MARGIN_LO, MARGIN_HI), RHO_E_MIN = THRESHOLDS["lines_margin_8"], THRESHOLDS["e_rho_min"]
#: issue #23's facts 1-4 -> the rows of the report's judgement that make each (fact 4: TA and TIES)
FACT_KEYS = {1: ("1",), 2: ("2a", "2b"), 3: ("3",),
             4: ("4-task_arithmetic-e", "4-task_arithmetic-c", "4-ties_merging-e", "4-ties_merging-c")}
ZOOM_RETENTION = 0.94  # the middle panel: the builds near fact 1's threshold


def _numbers(cell: str) -> List[float]:
    """The numbers of a table cell, in order (the typographic minus read as '-', bold dropped)."""
    return [float(x) for x in NUMBER.findall(cell.replace("\u2212", "-").replace("*", ""))]


def _column(header: List[str], *starts: str) -> Optional[int]:
    for i, name in enumerate(header):
        if name.startswith(starts):
            return i
    return None


COLUMNS = {"build": ("build",), "change": ("recipe", "what changed"), "retention": ("fact 1 retention",),
           "forget": ("fact 2 loss",), "margin": ("fact 3 margin (",), "ta": ("fact 4 TA",), "ties": ("TIES",),
           "fidelity": ("8-task fidelity",)}  # field -> how its column's header starts


def _row(cells: List[str], col: Dict[str, Optional[int]]) -> Dict:
    ta = cells[col["ta"]]
    ties = cells[col["ties"]] if col["ties"] is not None else ta.split(";", 1)[1]
    ta = _numbers(ta.split(";", 1)[0])
    build = cells[col["build"]].replace("*", "")
    change = cells[col["change"]] if col["change"] is not None else ""
    named = f"{build} {change}"  # where a row names its seed and width
    seed, hidden = SEED.search(named), HIDDEN.search(named)
    forget, ties = _numbers(cells[col["forget"]]), _numbers(ties)
    return {"build": build, "change": change, "seed": int(seed.group(1)) if seed else 0,
            "hidden": int(hidden.group(1)) if hidden else SHIPPED_HIDDEN,
            "retention": _numbers(cells[col["retention"]])[0], "forgetting": forget[0], "recovered": forget[1],
            "margin": _numbers(cells[col["margin"]])[0], "ta_rho_e": ta[0], "ta_rho_c": ta[1],
            "ties_rho_e": ties[0], "ties_rho_c": ties[1], "fidelity": cells[col["fidelity"]].startswith("holds")}


def parse(markdown: str) -> List[Dict]:
    """One dict per row of the layer-wise section's build tables (see the module docstring).

    Keys: ``build``, ``change``, ``seed`` (``seed N`` in the row's build or change cell, else 0),
    ``hidden`` (the tower's width: ``hidden N`` in those cells, else the shipped 64),
    ``retention``, ``forgetting``, ``recovered``, ``margin``, ``ta_rho_e``, ``ta_rho_c``,
    ``ties_rho_e``, ``ties_rho_c`` and ``fidelity`` (True where the cell starts with "holds").
    """
    start = markdown.find(SECTION[0])
    if start < 0:
        raise ValueError(f"no section {SECTION[0]!r} in the document")
    end = markdown.find(SECTION[1], start + len(SECTION[0]))
    lines = markdown[start:end if end > 0 else None].splitlines()
    rows, col = [], None  # col: the current table's column of each field, None outside a build table
    for line in lines:
        if not line.startswith("|"):
            col = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if col is None:  # a header
            col = {key: _column(cells, *starts) for key, starts in COLUMNS.items()}
            if None in (col["build"], col["retention"], col["forget"], col["margin"], col["ta"], col["fidelity"]):
                col = {}
            continue
        if not col or set("".join(cells)) <= set("-: "):
            continue
        try:
            rows.append(_row(cells, col))
        except (IndexError, ValueError) as err:
            raise ValueError(f"cannot read the table row {line!r}: {err}") from err
    return rows


def facts_met(row: Dict) -> List[int]:
    """Which of issue #23's facts 1-4 one 8-task build meets, as the layer-wise report judges them
    (``layerwise_facts.judge``; fact 4 for task arithmetic and TIES, e and c together)."""
    single = {"target": {"retention": row["retention"]}, "depth_gain": 0.0,
              "others": {"loss": row["forgetting"], "recovered": row["recovered"]}}
    trends = {merger: {"e_rho": row[f"{short}_rho_e"], "c_rho": row[f"{short}_rho_c"]}
              for merger, short in (("task_arithmetic", "ta"), ("ties_merging", "ties"))}
    passed = {f["fact"]: f["passed"] for f in judge(8, single, {"margin": row["margin"], "margin_se": 0.0}, trends)}
    return [n for n, keys in FACT_KEYS.items() if all(passed[k] for k in keys)]


def draw(rows: List[Dict], out: Path) -> None:
    from fusion_bench_larv.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), constrained_layout=True)
    fact1 = "fact 1: retention of the fine-tuned accuracy under the ramp"
    fact3 = "fact 3: LiNeS − task arithmetic, 8 tasks (points)"
    panels = [("retention", "margin", fact1, fact3, (RETENTION_MIN, None), (MARGIN_LO, MARGIN_HI), None),
              ("retention", "margin", fact1 + " (zoom)", fact3, (RETENTION_MIN, None), (MARGIN_LO, MARGIN_HI),
               (ZOOM_RETENTION, 1.0)),
              ("forgetting", "ta_rho_e", "fact 2: accuracy lost on the other 7 tasks (points)",
               "fact 4: task arithmetic's Spearman ρ(depth, e)", (FORGET_MIN, None), (RHO_E_MIN, None), None)]
    colours = {0: "tab:blue", 1: "tab:orange", 2: "tab:green"}
    for ax, (x, y, xlabel, ylabel, (x_lo, x_hi), (y_lo, y_hi), zoom) in zip(axes, panels):
        shown = [r for r in rows if zoom is None or zoom[0] <= r[x] <= zoom[1]]
        for row in shown:
            colour = colours.get(row["seed"], "tab:gray")
            ax.scatter(row[x], row[y], s=36, edgecolors=colour, linewidths=1.4,
                       marker="o" if row["hidden"] == SHIPPED_HIDDEN else "s",
                       facecolors=colour if row["fidelity"] else "none", zorder=3)
            label = LABEL.match(row["build"])
            if label:
                ax.annotate(label.group(0).replace("baseline (shipped)", "shipped"), (row[x], row[y]),
                            textcoords="offset points", xytext=(4, 3), fontsize=7, zorder=4)
        if zoom is not None:
            ax.set_xlim(zoom[0] - 0.002, zoom[1] + 0.002)
            ax.set_title(f"{len(shown)} builds with retention ≥ {zoom[0]}", fontsize=9)
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        x1, y1 = max(x1, x_lo), max(y1, y_lo)
        # the target: the box where the x fact and the y fact both hold
        ax.add_patch(plt.Rectangle((x_lo, y_lo), (x_hi or x1) - x_lo, min(y_hi or y1, y1) - y_lo,
                                   color="tab:green", alpha=0.10, lw=0))
        ax.axvline(x_lo, color="tab:green", lw=0.8, ls="--")
        ax.axhline(y_lo, color="tab:green", lw=0.8, ls="--")
        if y_hi is not None and y_hi < y1:
            ax.axhline(y_hi, color="tab:green", lw=0.8, ls="--")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=f"seed {s}") for s, c in colours.items()
               if any(r["seed"] == s for r in rows)]
    handles += [plt.Line2D([], [], ls="", marker="o", color="k", label="8-task fidelity holds"),
                plt.Line2D([], [], ls="", marker="o", color="k", markerfacecolor="none", label="fidelity fails")]
    handles += [plt.Line2D([], [], ls="", marker="s", color="k", markerfacecolor="none", label=f"hidden {h}")
                for h in sorted({r["hidden"] for r in rows} - {SHIPPED_HIDDEN})]
    axes[0].legend(handles=handles, fontsize=8, loc="lower left")
    fig.suptitle(f"Issue #23: {len(rows)} 8-task builds of docs/benchmark.md ("
                 "green boxes: where both facts of a panel hold)")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out.parent, out.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmark.md",
                    help=f"the Markdown file whose section {SECTION[0][3:]!r} holds the build tables"
                         " (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "layerwise" / "tried",
                    help="path without suffix: OUT.png and OUT.pdf are written (default: %(default)s)")
    args = ap.parse_args(argv)
    rows = parse(args.doc.read_text(encoding="utf-8"))
    if not rows:
        raise SystemExit(f"{args.doc}: no build table in the section {SECTION[0]!r}")
    print(f"{'build':<40} seed retention forget/back  margin  TA rho(e)/(c)  TIES rho(e)/(c)  fidelity  facts met")
    for r in rows:
        name = r["build"] if LABEL.match(r["build"]) else f"{r['build']}: {r['change']}"
        print(f"{name[:40]:<40} {r['seed']:>4} {r['retention']:>9.3f} {r['forgetting']:>6.2f}/{r['recovered']:.2f}"
              f" {r['margin']:>+7.2f}  {r['ta_rho_e']:+.2f}/{r['ta_rho_c']:+.2f}    {r['ties_rho_e']:+.2f}/{r['ties_rho_c']:+.2f}"
              f"      {'holds' if r['fidelity'] else 'fails':<8}  {','.join(map(str, facts_met(r))) or '-'}")
    every = [r["build"] for r in rows if facts_met(r) == [1, 2, 3, 4] and r["fidelity"]]
    print(f"\n{len(rows)} builds; facts 1-4 and the fidelity checks together: {', '.join(every) or 'none'}")
    draw(rows, args.out)
    print(f"wrote {args.out}.png and .pdf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
