"""fusion-bench-larv: LARV (Layer-wise Adaptive Rescaling Veneer) for FusionBench.

LARV (Wang, Deng, Dou, Bi, Lu, arXiv 2602.09413) gives each transformer block a
data-free scale computed from the weights alone and rescales that block's task
vectors around any task-vector merger. See ``LARV_SPEC`` in the docs for the
definitions this package implements.
"""

__version__ = "0.1.0"
