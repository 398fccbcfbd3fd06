"""fusion-bench-larv: LARV (Layer-wise Adaptive Rescaling Veneer) for FusionBench.

LARV (Wang, Deng, Dou, Bi, Lu, arXiv 2602.09413) gives each transformer block a data-free scale
computed from the weights alone and rescales that block's task vectors around any task-vector
merger. docs/method.md states the definitions this package implements and which choices are the
paper's and which are ours. The method is the package root (``blocks``, ``diagnostics``,
``gates``, ``schedule``, ``algorithm``, ``report`` and their helpers); the paper-reproduction lab
is :mod:`fusion_bench_larv.paper`.
"""

__version__ = "0.1.0"
