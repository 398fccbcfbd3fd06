"""Tables as data, and their Markdown and LaTeX renderings (``make-larv-tables``).

A :class:`Table` is a title, a header and rows of cell strings; :func:`to_markdown` and
:func:`to_latex` render it. Accuracies are fractions in, percentages with one decimal out
(:func:`pct`, :func:`pct_delta`); a missing cell is ``plots.MISSING``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional

from ..plots import MISSING

__all__ = ["Table", "pct", "pct_delta", "to_markdown", "to_latex", "latex_escape", "slug"]


def pct(x: Optional[float]) -> str:
    if x is None:
        return MISSING
    return "NaN" if math.isnan(x) else f"{100 * x:.1f}"


def pct_delta(x: Optional[float], base: Optional[float]) -> str:
    if x is None:
        return MISSING
    if base is None or math.isnan(x) or math.isnan(base):
        return pct(x)
    return f"{100 * x:.1f} ({100 * (x - base):+.1f})"


@dataclass
class Table:
    """A rendered-agnostic table: a title, a header and rows of cell strings."""

    key: str
    title: str
    header: List[str]
    rows: List[List[str]]
    note: str = ""


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", s)


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(table.header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(row) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
                  "—": "--", "\\": r"$\backslash$", "Δ": r"$\Delta$"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(s))


def to_latex(table: Table) -> str:
    cols = "l" + "r" * (len(table.header) - 1)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
             rf"\label{{tab:larv-{slug(table.key)}}}", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.header) + r" \\", r"\midrule"]
    for i, row in enumerate(table.rows):
        cells = [latex_escape(c) for c in row]
        lines.append(" & ".join(cells) + r" \\")
        if row[0] == "+ LARV" and i + 1 < len(table.rows):
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
