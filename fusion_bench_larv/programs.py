"""Old import path of :class:`fusion_bench_larv.paper.programs.ResumableFusionProgram`.

Kept so that saved commands (``_target_=fusion_bench_larv.programs.ResumableFusionProgram``)
still run; the program lives in the paper lab, :mod:`fusion_bench_larv.paper.programs`.
"""

from .paper.programs import ResumableFusionProgram  # noqa: F401

__all__ = ["ResumableFusionProgram"]
