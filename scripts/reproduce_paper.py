#!/usr/bin/env python
"""Reproduce the LARV paper's experiments as Hydra multiruns of `fusion_bench` (see docs/reproducing.md).

Thin wrapper around `fusion_bench_larv.paper.reproduce.main`, also installed as `reproduce-larv`.
"""
import sys

from fusion_bench_larv.paper.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
