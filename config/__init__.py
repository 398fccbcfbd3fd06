"""Hydra configs of fusion-bench-larv (shipped as the ``fusion_bench_larv_config`` package).

This file must exist: Hydra's ``pkg://`` search-path entries need an importable package.
"""
