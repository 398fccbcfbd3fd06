"""The values LARV ships, each written once: the merger table and the tier levels.

:data:`MERGERS` is the one table of base mergers. Each record holds the merger's FusionBench
settings for CLIP (its ``base_method`` config), FusionBench's ``method=`` option for the bare
run, its global scaling factor, and two facts LARV relies on:

* ``homogeneous``: the merger is positively homogeneous per block (scaling every task vector of
  a block by the same λ >= 0 scales the block's merged update by λ). For these mergers
  ``apply: pre`` and ``apply: post`` give the same model, so LARV runs the cheaper ``post``
  path (``tests/test_algorithm.py`` checks the equality). TIES (its trim is a top-k over the
  whole flattened model) and WUDI (a fixed-step optimisation) are not.
* ``svd``: it calls ``torch.linalg.svd``, which has no half-precision kernel on CPU.

Everything else reads this table: ``LARVAlgorithm``'s named subclasses (``LARVIsoC``, ...)
default ``base_method`` to :data:`BASE_MERGERS`; each ``config/method/larv_<key>.yaml`` repeats
its entry for Hydra (``tests/test_method_configs.py`` keeps the two equal); the pool guard
(``watched_pool``) finds the SVD mergers here; the LiNeS gate sets ``scale_key`` to 1; the paper
lab takes its bare baselines and labels from the ``main`` records.

The settings are FusionBench's CLIP settings: task arithmetic and TIES ``scaling_factor`` 0.3
(FusionBench's configs), Iso-C and Iso-CTS 1.5 (FusionBench's docs for CLIP; its yaml default
is 1.0), TSV-M ``alpha`` 1.0, MagMax 0.5 (FusionBench's config). The tier levels are ours
(docs/method.md): the paper's exact values are not available to us.
"""

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["Merger", "MERGERS", "BASE_MERGERS", "MAIN_MERGERS", "merger_of", "config_of", "unit_scale_config",
           "DEFAULT_TIERS", "TWO_LEVEL_TIERS"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Merger:
    """One base merger.

    Args:
        key: short name: ``larv_<key>`` config, ``--mergers`` of the lab.
        label: name in tables.
        config: the ``base_method`` config (FusionBench's CLIP settings).
        bare_method: FusionBench's ``method=`` option of the bare merger.
        bare_keys: the ``config`` keys a bare run must override (the others are FusionBench's
            own defaults already).
        scale_key: the key of its global scaling factor (``None``: it has none).
        homogeneous: positively homogeneous per block (``pre`` == ``post``).
        svd: calls ``torch.linalg.svd``.
        main: one of the paper's six mergers (the lab's main table).
    """

    key: str
    label: str
    config: Mapping[str, Any]
    bare_method: str
    bare_keys: Tuple[str, ...] = ()
    scale_key: Optional[str] = None
    homogeneous: bool = True
    svd: bool = False
    main: bool = False
    #: the scale grid a validation-tuned bare run searches (``reproduce-larv depth``); ours
    scale_grid: Tuple[float, ...] = field(default=())

    @property
    def target(self) -> str:
        return str(self.config["_target_"])

    @property
    def larv_method(self) -> str:
        """This package's ``method=`` option."""
        return f"larv_{self.key}"

    @property
    def bare_overrides(self) -> Tuple[Tuple[str, str], ...]:
        """``method.<key>=<value>`` of the bare run."""
        return tuple((f"method.{k}", str(self.config[k])) for k in self.bare_keys)


_TENTHS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # 0.1 ... 1.0 (task arithmetic's usual grid)
_SVD_GRID = tuple(round(0.25 * i, 2) for i in range(2, 9))  # 0.5 ... 2.0

#: merger key -> record, the paper's six first (in the order of its tables)
MERGERS: Dict[str, Merger] = {m.key: m for m in [
    Merger("simple_average", "Simple Averaging", {"_target_": "fusion_bench.method.SimpleAverageAlgorithm"},
           "simple_average", main=True),
    Merger("task_arithmetic", "Task Arithmetic",
           {"_target_": "fusion_bench.method.TaskArithmeticAlgorithm", "scaling_factor": 0.3},
           "task_arithmetic", ("scaling_factor",), scale_key="scaling_factor", main=True, scale_grid=_TENTHS),
    Merger("ties_merging", "TIES",
           {"_target_": "fusion_bench.method.TiesMergingAlgorithm", "scaling_factor": 0.3, "threshold": 20,
            "remove_keys": [], "merge_func": "sum"},
           "ties_merging", ("scaling_factor",), scale_key="scaling_factor", homogeneous=False, main=True,
           scale_grid=_TENTHS),
    Merger("tsvm", "TSV-M",
           {"_target_": "fusion_bench.method.TaskSingularVectorMerging", "alpha": 1.0, "exclude_keys": None,
            "return_single_task_models": False},
           "task_singular_vector/TaskSingularVectorMerging", ("alpha",), scale_key="alpha", svd=True, main=True,
           scale_grid=_SVD_GRID),
    Merger("iso_c", "Iso-C", {"_target_": "fusion_bench.method.ISO_C_Merge", "scaling_factor": 1.5,
                              "exclude_keys": None},
           "isotropic_merging/iso_c", ("scaling_factor",), scale_key="scaling_factor", svd=True, main=True,
           scale_grid=_SVD_GRID),
    Merger("iso_cts", "Iso-CTS", {"_target_": "fusion_bench.method.ISO_CTS_Merge", "scaling_factor": 1.5,
                                  "common_space_fraction": 0.8, "exclude_keys": None},
           "isotropic_merging/iso_cts", ("scaling_factor",), scale_key="scaling_factor", svd=True, main=True,
           scale_grid=_SVD_GRID),
    # DARE's random drop mask is drawn from the RNG state LARV restores before every base-merger
    # run, so both runs of `pre` drop the same entries: homogeneous given that mask
    Merger("dare_task_arithmetic", "DARE + TA",
           {"_target_": "fusion_bench.method.DareTaskArithmetic", "scaling_factor": 0.3, "sparsity_ratio": 0.5,
            "only_on_linear_weights": False, "rescale": True},
           "dare/task_arithmetic", scale_key="scaling_factor", scale_grid=_TENTHS),
    Merger("wudi", "WUDI", {"_target_": "fusion_bench.method.WUDIMerging", "iter_num": 400, "exclude_keys": None},
           "wudi/wudi", homogeneous=False),
    Merger("magmax", "MagMax", {"_target_": "fusion_bench.method.MagMaxAlgorithm", "scaling_factor": 0.5},
           "magmax/magmax", ("scaling_factor",), scale_key="scaling_factor", scale_grid=_TENTHS),
]}

#: merger key -> its ``base_method`` config
BASE_MERGERS: Dict[str, Mapping[str, Any]] = {key: m.config for key, m in MERGERS.items()}
#: the paper's six mergers, in table order
MAIN_MERGERS: Tuple[str, ...] = tuple(key for key, m in MERGERS.items() if m.main)


def merger_of(base_method) -> Optional[Merger]:
    """The record of a ``base_method`` (config with ``_target_`` or ``BaseAlgorithm``), matched by
    class (subclasses included); ``None`` for a merger this table does not know."""
    from fusion_bench import BaseAlgorithm
    from fusion_bench.utils import import_object

    if isinstance(base_method, BaseAlgorithm):
        cls = type(base_method)
    else:
        try:
            cls = import_object(str(base_method["_target_"]))
        except Exception:  # an unimportable target fails, wrapped, when instantiated
            return None
    if not isinstance(cls, type):
        return None
    for merger in MERGERS.values():
        if issubclass(cls, import_object(merger.target)):
            return merger
    return None


def config_of(base) -> Dict[str, Any]:
    """A base merger's config, JSON-ready (a ``BaseAlgorithm``: its class and scale keys)."""
    from fusion_bench import BaseAlgorithm
    from omegaconf import DictConfig, OmegaConf

    if isinstance(base, BaseAlgorithm):
        out: Dict[str, Any] = {"_target_": f"{type(base).__module__}.{type(base).__qualname__}"}
        out.update({k: getattr(base, k) for k in ("scaling_factor", "alpha")
                    if isinstance(getattr(base, k, None), (int, float))})
        return out
    if isinstance(base, DictConfig):
        return OmegaConf.to_container(base, resolve=True)
    return copy.deepcopy(dict(base))


def unit_scale_config(base_method, merger: Optional[Merger], why: str):
    """``base_method`` with its global scaling factor (the table's ``scale_key``) at 1, for a
    rule that rescales the merger's update at scale 1 (LiNeS). A merger the table does not know
    gets its ``scaling_factor`` set to 1 if it has one, with a warning either way; one without a
    global factor (simple averaging, WUDI) is returned as it is."""
    from fusion_bench import BaseAlgorithm

    key = merger.scale_key if merger is not None else None
    if merger is None:
        key = "scaling_factor" if not isinstance(base_method, BaseAlgorithm) and "scaling_factor" in base_method else None
        log.warning("LARV %s: the merger %s is not in LARV's merger table; %s", why, config_of(base_method).get("_target_"),
                    f"its {key} is set to 1" if key else "it runs as configured (no global scaling factor known)")
    if key is None:
        return base_method
    if isinstance(base_method, BaseAlgorithm):
        base = copy.copy(base_method)
        setattr(base, key, 1.0)
        return base
    base = config_of(base_method)
    base[key] = 1.0
    return base


#: the default 3-level tiers, lowest-scored blocks first (ours)
DEFAULT_TIERS: Tuple[float, ...] = (0.6, 1.0, 1.2)
#: the 2-level alternative (ours)
TWO_LEVEL_TIERS: Tuple[float, ...] = (0.8, 1.2)
