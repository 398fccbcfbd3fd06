#!/usr/bin/env python
"""Collect LARV job reports into a tidy CSV, Markdown/LaTeX tables and figures (see docs/reproducing.md).

Thin wrapper around `fusion_bench_larv.paper.tables.main`, also installed as `make-larv-tables`.
"""
import sys

from fusion_bench_larv.paper.tables import main

if __name__ == "__main__":
    sys.exit(main())
