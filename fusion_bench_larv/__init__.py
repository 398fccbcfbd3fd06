"""fusion-bench-larv: LARV (Layer-wise Adaptive Rescaling Veneer) for FusionBench.

LARV (Wang, Deng, Dou, Bi, Lu, arXiv 2602.09413) gives each transformer block a data-free scale
computed from the weights alone and rescales that block's task vectors around any task-vector
merger. docs/method.md states the definitions this package implements and which choices are the
paper's and which are ours. The method is the package root (``blocks``, ``diagnostics``,
``gates``, ``gate_table``, ``schedule``, ``settings``, ``algorithm``, ``report`` and their helpers),
and it imports none of the wings: :mod:`fusion_bench_larv.runs` (the sweep callback, the report
reader, the resumable program, the heatmap), :mod:`fusion_bench_larv.taskpools` (the CLIP
classification and Flan-T5 GLUE task pools), :mod:`fusion_bench_larv.synth` (the embedded
benchmark) and :mod:`fusion_bench_larv.paper` (the paper-reproduction lab).
"""

__version__ = "0.1.0"
