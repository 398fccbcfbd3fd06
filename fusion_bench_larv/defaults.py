"""The values LARV ships, each written once: the base mergers' settings and the tier levels.

Everything else that states them reads them from here or is checked against them:

* ``LARVAlgorithm``'s named subclasses (``LARVIsoC``, ...) default ``base_method`` to
  :data:`BASE_MERGERS`; each ``config/method/larv_<name>.yaml`` repeats its entry for Hydra, and
  ``tests/test_method_configs.py`` keeps the two equal;
* ``LARVAlgorithm(tiers=...)`` defaults to :data:`DEFAULT_TIERS`; ``config/method/larv/_defaults.yaml``
  repeats it (same test);
* the paper lab's bare baselines (``paper/experiments.py``) take their overrides from
  :data:`BASE_MERGERS`, and its gate ablation's tier levels from the two tuples below.

The base mergers use FusionBench's CLIP settings: task arithmetic and TIES ``scaling_factor``
0.3 (FusionBench's configs), Iso-C and Iso-CTS 1.5 (FusionBench's docs for CLIP; its yaml default
is 1.0), TSV-M ``alpha`` 1.0. The tier levels are ours (docs/method.md): the paper's exact values
are not available to us.
"""

from typing import Any, Dict, Tuple

__all__ = ["BASE_MERGERS", "DEFAULT_TIERS", "TWO_LEVEL_TIERS"]

#: merger key (``larv_<key>`` config) -> its ``base_method`` config
BASE_MERGERS: Dict[str, Dict[str, Any]] = {
    "simple_average": {"_target_": "fusion_bench.method.SimpleAverageAlgorithm"},
    "task_arithmetic": {
        "_target_": "fusion_bench.method.TaskArithmeticAlgorithm",
        "scaling_factor": 0.3,
    },
    "ties_merging": {
        "_target_": "fusion_bench.method.TiesMergingAlgorithm",
        "scaling_factor": 0.3,
        "threshold": 20,
        "remove_keys": [],
        "merge_func": "sum",
    },
    "tsvm": {
        "_target_": "fusion_bench.method.TaskSingularVectorMerging",
        "alpha": 1.0,
        "exclude_keys": None,
        "return_single_task_models": False,
    },
    "iso_c": {
        "_target_": "fusion_bench.method.ISO_C_Merge",
        "scaling_factor": 1.5,
        "exclude_keys": None,
    },
    "iso_cts": {
        "_target_": "fusion_bench.method.ISO_CTS_Merge",
        "scaling_factor": 1.5,
        "common_space_fraction": 0.8,
        "exclude_keys": None,
    },
    "dare_task_arithmetic": {
        "_target_": "fusion_bench.method.DareTaskArithmetic",
        "scaling_factor": 0.3,
        "sparsity_ratio": 0.5,
        "only_on_linear_weights": False,
        "rescale": True,
    },
    "wudi": {"_target_": "fusion_bench.method.WUDIMerging", "iter_num": 400, "exclude_keys": None},
    "magmax": {"_target_": "fusion_bench.method.MagMaxAlgorithm", "scaling_factor": 0.5},
}

#: the default 3-level tiers, lowest-scored blocks first (ours)
DEFAULT_TIERS: Tuple[float, ...] = (0.6, 1.0, 1.2)
#: the 2-level alternative (ours)
TWO_LEVEL_TIERS: Tuple[float, ...] = (0.8, 1.2)
