"""LARV as a FusionBench algorithm: wraps ANY task-vector merger given as ``base_method``.

LARV (Layer-wise Adaptive Rescaling Veneer; Wang, Deng, Dou, Bi, Lu, arXiv 2602.09413) gives
every transformer block ℓ a data-free scale λ_ℓ computed from the weights alone and rescales
that block's task vectors (``apply: pre``) or, equivalently for mergers that are positively
homogeneous per block, the block's merged update (``apply: post``, the default):

    θ = θ0 + λ ⊙ M(θ0, {τ_t})           (post)
    θ = M(θ0, {λ ⊙ τ_t})                (pre, the paper's literal "before aggregation")

The definitions (diagnostics e, c, score s, gates) follow the project's LARV_SPEC; the math
lives in ``diagnostics.py`` and ``gates.py``, the name → block → scale resolution in
``blocks.py`` and ``veneer.py``. This module only loads, calls the base merger, applies the
schedule, records and returns.

Which defaults are the paper's: the tiered gate as the main variant, 2 or 3 levels, the
continuous gate as an ablation. Which are ours (the paper's full text is not available):
the tier values [0.6, 1.0, 1.2], η = 1, ρ = 0.5, the continuous gate's a = 0.5 and γ = 3, the
LiNeS-style α = β = 0.6, ``non_block_scale`` = 1, ``source: merged`` and ``apply: post``.
"""

import copy
import difflib
import inspect
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from fusion_bench import BaseAlgorithm, BaseModelPool, auto_register_config
from fusion_bench.mixins import LightningFabricMixin, SimpleProfilerMixin
from fusion_bench.utils import import_object, instantiate

from .checkpoints import check_checkpoint, checkpoint_path, tied_groups
from .blocks import BlockLayout, diagnostic_keys, find_blocks, validate_block_pattern
from .diagnostics import CPU_LINALG, RANK_METHODS, block_diagnostics, process_rank_cache, rank_method_dtype
from .report import save_layer_report
from .veneer import (
    APPLIES,
    CONFLICTS,
    GATES,
    SOURCES,
    TIER_ASSIGNMENTS,
    Delta,
    LayerSchedule,
    build_schedule,
    check_compatible,
    check_finite,
    combine_diagnostics,
    float_state_dict,
    rescale_update_,
    restore_,
    snapshot,
)

log = logging.getLogger(__name__)

PRETRAINED = "_pretrained_"

# Base mergers with FusionBench's CLIP settings (task arithmetic and TIES λ = 0.3 as in
# FusionBench's configs; Iso-C / Iso-CTS λ = 1.5 as FusionBench's docs use for CLIP, where its
# yaml default is 1.0; TSV-M α = 1.0). The shipped config/method/larv_<name>.yaml files repeat
# these (tests/test_method_configs.py keeps the two in agreement).
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

DEFAULT_TIERS = (0.6, 1.0, 1.2)


# ----------------------------------------------------------------------------- validation
def _choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def _real(key: str, value: Any, *, minimum: Optional[float] = None, positive: bool = False,
          optional: bool = False) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{key} must be > 0, got {value!r}")
    return value


def _tiers(value: Any) -> List[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, ListConfig)):
        raise TypeError(f"tiers must be a list of numbers, got {value!r}")
    tiers = [_real(f"tiers[{i}]", v, minimum=0.0) for i, v in enumerate(value)]
    if len(tiers) < 2:
        raise ValueError(f"tiers needs at least 2 levels, got {list(value)!r}")
    return tiers


def _block_pattern(value: Any) -> Union[None, str, List[str]]:
    if isinstance(value, ListConfig):
        value = list(value)
    validate_block_pattern(value)  # same checks (and messages) as find_blocks
    return value


# Hydra's instantiate keys: consumed by Hydra, but accepted if a caller passes them through.
HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_", "_args_")

# Numeric keys of FusionBench's mergers: checked for a number before the merger sees them.
BASE_NUMERIC_KEYS = ("scaling_factor", "alpha", "threshold", "sparsity_ratio", "common_space_fraction",
                     "iter_num")

# Mergers that call torch.linalg.svd, which has no float16/bfloat16 kernel on CPU.
SVD_MERGERS = ("fusion_bench.method.ISO_C_Merge", "fusion_bench.method.ISO_CTS_Merge",
               "fusion_bench.method.TaskSingularVectorMerging")
HALF_DTYPES = (torch.float16, torch.bfloat16)


class PoolModelError(ValueError):
    """A model handed out by the pool failed LARV's checks (raised as is, never wrapped as a
    base-merger failure)."""


class BaseMergerError(RuntimeError):
    """The base merger failed: the message says which merger, its config and LARV's phase; the
    merger's own exception is chained (``__cause__``)."""


def _init_keys(cls: type) -> List[str]:
    """The named parameters of ``cls.__init__`` (auto_register_config keeps the signature)."""
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _check_unknown_keys(cls: type, kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` for a key that neither LARV nor FusionBench's base classes take
    (``+method.tier=...``, ``LARVIsoC(gatee=...)``), with the closest valid key."""
    own = _init_keys(LARVAlgorithm)
    framework = set(HYDRA_KEYS)
    for base in cls.__mro__:
        if base not in (LARVAlgorithm, object) and "__init__" in base.__dict__ and not issubclass(base, LARVAlgorithm):
            framework.update(_init_keys(base))
    unknown = [key for key in kwargs if key not in framework]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, own, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TypeError(
            f"{cls.__name__}: unknown key '{key}' = {kwargs[key]!r}{hint}; valid keys: {own}"
            + (f" (also unknown: {unknown[1:]})" if len(unknown) > 1 else "")
        )


def _check_base_method_values(base_method: Mapping) -> None:
    """Type-check the numeric keys of FusionBench's mergers (``scaling_factor=abc`` otherwise
    fails deep inside the merger)."""
    for key in BASE_NUMERIC_KEYS:
        if key in base_method and base_method[key] is not None:
            _real(f"base_method.{key}", base_method[key])


def _check_gate_range(algo: "LARVAlgorithm") -> None:
    """Refuse gate parameters that give some block λ < 0 or every block λ = 0 (the checks that
    need the scores are in ``veneer.check_scales``)."""
    if algo.gate == "tiered" and all(t == 0 for t in algo.tiers):
        raise ValueError(f"tiers {algo.tiers} are all 0: every block would get λ = 0 (the pretrained "
                         "model); give at least one tier a value > 0")
    if algo.gate == "continuous":
        if algo.amplitude > 1 and algo.min_scale is None:
            raise ValueError(
                f"amplitude {algo.amplitude} > 1 lets the continuous gate λ = 1 + a·tanh(...) reach "
                f"1 - a = {1 - algo.amplitude} < 0 (flipped task vectors); use amplitude <= 1 or "
                "set min_scale >= 0"
            )
        if algo.max_scale == 0:
            raise ValueError("max_scale 0 gives every block λ = 0 (the pretrained model); use max_scale > 0")
    if algo.gate == "linear_depth":
        alpha, beta = algo.lines_alpha, algo.lines_beta
        if alpha < 0:
            raise ValueError(f"lines_alpha {alpha} < 0 gives the first block λ = {alpha} < 0")
        if alpha + beta < 0:
            raise ValueError(f"lines_alpha + lines_beta = {alpha} + {beta} < 0 gives the last block "
                             f"λ = {alpha + beta} < 0")
        if alpha == 0 and alpha + beta == 0:
            raise ValueError("lines_alpha = lines_beta = 0 gives every block λ = 0 (the pretrained model)")


def aliases_any(model: nn.Module, others: Sequence[nn.Module]) -> bool:
    """Whether any tensor of ``model`` shares storage with a tensor of one of ``others``."""
    if not others:
        return False
    storages = {t.untyped_storage().data_ptr() for m in others for t in m.state_dict().values()}
    return any(t.untyped_storage().data_ptr() in storages for t in model.state_dict().values())


# ----------------------------------------------------------------------------- algorithm
@auto_register_config
class LARVAlgorithm(LightningFabricMixin, SimpleProfilerMixin, BaseAlgorithm):
    """LARV around any FusionBench task-vector merger.

    Args:
        base_method: the merger to wrap: a config with ``_target_`` (instantiated without
            recursion, with this program's fabric handed over) or a ``BaseAlgorithm``. The
            named subclasses (``LARVIsoC``, ...) default it to FusionBench's CLIP settings.
        gate: ``tiered`` (the paper's main variant) | ``continuous`` (the paper's ablation) |
            ``linear_depth`` (LiNeS-style baseline) | ``identity`` (λ = 1: the bare merger).
        tiers: tier values, lowest-scored blocks first; 2 or more levels, each finite and >= 0
            (0 switches a tier off), not all 0. Default [0.6, 1.0, 1.2] is ours, not the paper's.
        tier_assignment: ``score`` (rank blocks by s) or ``depth`` (depth-only ablation).
        eta: η, exponent of the rank contrast e in the score (ours: 1).
        rho: ρ >= 0, exponent of the depth prior ((ℓ+1)/L)^ρ (ours: 0.5; 0 removes it).
        conflict: ``base`` (commutator of W0 and D) or ``pairwise`` (between task updates).
        source: ``merged`` (D = the base merger's update Δ) or ``task_vectors`` (D = τ_t,
            diagnostics averaged over tasks).
        apply: ``post`` (θ0 + λ ⊙ Δ) or ``pre`` (the base merger runs on θ0 + λ ⊙ τ_t).
        non_block_scale: scale of every parameter outside the blocks (ours: 1).
        amplitude, steepness: a and γ of the continuous gate λ = 1 + a tanh(γ (s/median(s) − 1)).
            a > 1 could give λ < 0 (flipped task vectors) and needs ``min_scale >= 0``.
        min_scale, max_scale: optional clamp of the continuous gate (``max_scale: 0`` is refused).
        lines_alpha, lines_beta: α and β of the linear_depth gate λ = α + β ℓ / (L − 1); α >= 0
            and α + β >= 0 (every λ >= 0), not both 0.
        block_pattern: null (detect HF CLIP, open_clip or T5 blocks) or a regex / list of
            regexes with one capture group for the block index.
        rank_method: ``exact`` (float64 Gram matrices, eigenvalues and commutator products: the
            reference) or ``approximate`` (the same in float32: about 2x cheaper on CPU; r_eff
            error against exact measured in docs/performance.md: <= 1e-6 relative on full-rank
            matrices, up to ~6e-5 on exactly low-rank updates).
        rank_cache: reuse pretrained-matrix effective ranks across runs in this process (keyed
            by parameter name, shape, precision and a BLAKE2b digest of the weights; exact).
        rank_cache_dir: null (memory only) or a folder where the cached ranks are also kept
            across processes (one small JSON file per matrix, written atomically: safe for
            concurrent multirun jobs; each checked on read, see ``diagnostics.RankCache``).
            Created and proven writable before the base merger runs. Needs ``rank_cache: true``.
        cpu_linalg: ``numpy`` (default: numpy's OpenBLAS/LAPACK, measured faster on CPU in
            docs/performance.md) or ``torch``: which library does the diagnostics' products and
            eigenvalues on CPU; the same float64 arithmetic, equal results to round-off. Other
            devices (the fabric's GPU) always use torch.

    Raises (see README "Errors"): ``TypeError`` for an unknown key (with the closest valid one)
    or a non-numeric base-merger value; ``ValueError`` for a bad value, a schedule with some
    λ < 0 or every λ = 0, a model or checkpoint that does not match θ0, a half-precision pool
    with an SVD merger on CPU, or an unusable ``rank_cache_dir``; ``BaseMergerError`` for an
    error inside the base merger (chained).
    """

    def __init__(
        self,
        base_method: Union[DictConfig, Mapping, BaseAlgorithm, None] = None,
        gate: str = "tiered",
        tiers: Sequence[float] = DEFAULT_TIERS,
        tier_assignment: str = "score",
        eta: float = 1.0,
        rho: float = 0.5,
        conflict: str = "base",
        source: str = "merged",
        apply: str = "post",
        non_block_scale: float = 1.0,
        amplitude: float = 0.5,
        steepness: float = 3.0,
        min_scale: Optional[float] = None,
        max_scale: Optional[float] = None,
        lines_alpha: float = 0.6,
        lines_beta: float = 0.6,
        block_pattern: Union[None, str, Sequence[str]] = None,
        rank_method: str = "exact",
        rank_cache: bool = True,
        rank_cache_dir: Optional[str] = None,
        cpu_linalg: str = "numpy",
        **kwargs,
    ):
        _check_unknown_keys(type(self), kwargs)
        super().__init__(**kwargs)
        if base_method is None:
            base_method = getattr(type(self), "default_base_method", None)
        if base_method is None:
            raise ValueError("base_method is required: a merger config with `_target_` or a BaseAlgorithm")
        if not isinstance(base_method, BaseAlgorithm):
            if not isinstance(base_method, (Mapping, DictConfig)) or "_target_" not in base_method:
                raise TypeError(
                    f"base_method must be a config with `_target_` or a BaseAlgorithm, got {base_method!r}"
                )
            _check_base_method_values(base_method)
        self.base_method = base_method
        self.gate = _choice("gate", gate, GATES)
        self.tiers = _tiers(tiers)
        self.tier_assignment = _choice("tier_assignment", tier_assignment, TIER_ASSIGNMENTS)
        self.eta = _real("eta", eta)
        self.rho = _real("rho", rho, minimum=0.0)
        self.conflict = _choice("conflict", conflict, CONFLICTS)
        self.source = _choice("source", source, SOURCES)
        self.apply = _choice("apply", apply, APPLIES)
        self.non_block_scale = _real("non_block_scale", non_block_scale, minimum=0.0)
        self.amplitude = _real("amplitude", amplitude, minimum=0.0)
        self.steepness = _real("steepness", steepness, positive=True)
        self.min_scale = _real("min_scale", min_scale, minimum=0.0, optional=True)
        self.max_scale = _real("max_scale", max_scale, minimum=0.0, optional=True)
        if self.min_scale is not None and self.max_scale is not None and self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({self.min_scale}) must be <= max_scale ({self.max_scale})")
        self.lines_alpha = _real("lines_alpha", lines_alpha)
        self.lines_beta = _real("lines_beta", lines_beta)
        self.block_pattern = _block_pattern(block_pattern)
        self.rank_method = _choice("rank_method", rank_method, RANK_METHODS)
        if not isinstance(rank_cache, bool):
            raise TypeError(f"rank_cache must be true or false, got {rank_cache!r}")
        self.rank_cache = rank_cache
        if rank_cache_dir is not None and (not isinstance(rank_cache_dir, str) or not rank_cache_dir):
            raise TypeError(f"rank_cache_dir must be null or a non-empty path string, got {rank_cache_dir!r}")
        if rank_cache_dir is not None and not rank_cache:
            raise ValueError(f"rank_cache_dir ({rank_cache_dir!r}) needs rank_cache: true")
        self.rank_cache_dir = rank_cache_dir
        self.cpu_linalg = _choice("cpu_linalg", cpu_linalg, CPU_LINALG)
        _check_gate_range(self)
        self.schedule: Optional[LayerSchedule] = None
        self.record: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ helpers
    def _new_base_merger(self) -> BaseAlgorithm:
        """A fresh base merger, with this program's fabric and program handed over."""
        if isinstance(self.base_method, BaseAlgorithm):
            merger = self.base_method
        else:
            merger = instantiate(self.base_method, _recursive_=False)
        if hasattr(merger, "_fabric_instance") and self._fabric_instance is not None:
            merger._fabric_instance = self._fabric_instance
        if hasattr(merger, "_program"):
            merger._program = getattr(self, "_program", None)
        return merger

    def _base_merger_error(self, phase: str, error: Exception) -> BaseMergerError:
        """``error`` of the base merger, re-raised with what LARV knows (merger, config, phase)."""
        base = self.config_record()["base_method"]
        return BaseMergerError(
            f"LARV: the base merger {base.get('_target_', '?')} failed while {phase}: "
            f"{type(error).__name__}: {error}\n  base_method config: {base}\n  LARV: gate={self.gate}, "
            f"apply={self.apply}, source={self.source}"
        )

    def _run_base(self, modelpool: BaseModelPool, reference: Mapping[str, torch.Tensor],
                  phase: str = "merging the fine-tuned models") -> nn.Module:
        try:
            merger = self._new_base_merger()
        except Exception as e:
            raise self._base_merger_error("being instantiated from base_method", e) from e
        # Every base-merger run starts from the RNG state run() started with, so randomized
        # mergers (DARE's drop masks) draw the same masks when `pre` runs the merger twice.
        torch.random.set_rng_state(self._rng_state)
        if self._cuda_rng_state is not None:
            torch.cuda.set_rng_state_all(self._cuda_rng_state)
        with self.profile("base merger"):
            try:
                merged = merger.run(modelpool)
            except PoolModelError:
                raise
            except Exception as e:
                raise self._base_merger_error(phase, e) from e
        if not isinstance(merged, nn.Module):
            raise TypeError(
                f"base merger {type(merger).__name__} returned {type(merged).__name__}; LARV needs a "
                "single merged nn.Module (e.g. TSV-M needs return_single_task_models: false)"
            )
        merged_sd = float_state_dict(merged)
        check_compatible("merged model", merged_sd, reference)
        check_finite("merged model", merged_sd)
        return merged

    def _svd_merger(self) -> Optional[str]:
        """The base merger's class path if it is one of ``SVD_MERGERS`` (else None)."""
        if isinstance(self.base_method, BaseAlgorithm):
            cls = type(self.base_method)
        else:
            try:
                cls = import_object(str(self.base_method["_target_"]))
            except Exception:  # an unimportable target fails, wrapped, when instantiated
                return None
        for target in SVD_MERGERS:
            svd_cls = import_object(target)
            if isinstance(cls, type) and issubclass(cls, svd_cls):
                return target
        return None

    def _check_half_precision(self, name: str, state: Mapping[str, torch.Tensor], device) -> None:
        """Fail first, with the fix, where an SVD merger would fail on float16/bfloat16 on CPU."""
        if device is not None and torch.device(device).type != "cpu":
            return
        half = sorted({str(v.dtype) for v in state.values() if v.dtype in HALF_DTYPES})
        if not half:
            return
        merger = self._svd_merger()
        if merger is not None:
            raise PoolModelError(
                f"model '{name}' is in {', '.join(half)}: the base merger {merger} calls torch.linalg.svd, "
                "which has no half-precision kernel on CPU. Load the models in float32: in Python "
                "`model.float()` before building the pool; in a FusionBench model pool config, "
                "`torch_dtype: float32` in the model's entry (or drop `torch_dtype: float16`); or "
                "run on a GPU"
            )

    def _check_checkpoints(self, modelpool: BaseModelPool, theta0, tied) -> List[str]:
        """Check every model the pool loads from disk against θ0, from the checkpoint files
        (``checkpoints.check_checkpoint``), before anything is merged. Returns the names whose
        weights are not on this disk yet (hub ids not downloaded): they are checked right after
        the pool loads them."""
        unchecked = []
        for name in modelpool.all_model_names:
            config = modelpool._models[name]
            if isinstance(config, nn.Module):
                continue  # in memory: checked on the module itself as the merger loads it
            path = checkpoint_path(config)
            if path is None:
                unchecked.append(name)
                continue
            check_checkpoint(name, path, theta0, tied)
        return unchecked

    @staticmethod
    def _watched_pool(
        modelpool: BaseModelPool,
        theta0: Mapping[str, torch.Tensor],
        scales: Optional[Mapping[str, float]] = None,
        copy_in_memory: bool = True,
        handed_out: Optional[Dict[str, nn.Module]] = None,
        check_model=None,
    ) -> BaseModelPool:
        """A shallow copy of ``modelpool`` whose ``load_model`` checks every model it hands out.

        Each model is checked against θ0 (same keys and shapes, finite values) as the base
        merger loads it, so no model is loaded twice. With ``scales`` (the ``pre`` veneer) each
        fine-tuned model is rescaled, θ0 + λ ⊙ τ_t, before the merger sees it.

        Modules held in memory by the pool (pools loaded from disk are never copied):

        * ``copy_in_memory=True``: each is deep-copied first and the pretrained model is always
          handed out as θ0. Needed whenever LARV rescales fine-tuned models (``pre``), runs the
          merger twice, or reads the fine-tuned models again after the merger ran (``source:
          task_vectors``, ``conflict: pairwise``): some mergers modify their inputs in place
          (FusionBench's simple average overwrites its first model, task arithmetic its
          pretrained one).
        * ``copy_in_memory=False`` (the default ``post`` + ``merged`` path, which reads only θ0,
          already snapshotted, and the merged model): handed out as they are, exactly as the
          bare merger sees them, and recorded in ``handed_out`` (name → module) so that the
          caller can copy a merged model that aliases one of them before rescaling it, and
          restore θ0 into the pretrained one afterwards.

        ``check_model(name, state)``, if given, runs first on every model handed out (LARV's
        half-precision and late checkpoint checks).
        """
        watched = copy.copy(modelpool)
        load_from_source = modelpool.load_model

        def load_model(model_name_or_config, *args, **kwargs):
            model = load_from_source(model_name_or_config, *args, **kwargs)
            name = model_name_or_config if isinstance(model_name_or_config, str) else "<config>"
            in_memory = isinstance(model_name_or_config, str) and isinstance(
                modelpool._models[model_name_or_config], nn.Module
            )
            if in_memory and copy_in_memory:
                model = copy.deepcopy(model)
            elif in_memory and handed_out is not None:
                handed_out[name] = model
            state = float_state_dict(model)
            try:
                if check_model is not None:
                    check_model(name, state)
                check_compatible(name, state, theta0)
                if name != PRETRAINED:
                    check_finite(name, state)
            except ValueError as e:
                raise PoolModelError(str(e)) from None
            if name == PRETRAINED:
                if in_memory and copy_in_memory:
                    restore_(state, theta0)
                return model
            if scales is not None:
                rescale_update_(state, theta0, scales)
            return model

        watched.load_model = load_model
        return watched

    def _diagnostics(self, modelpool, theta0, merged_state, layout: BlockLayout, device):
        """Block diagnostics from the merged update or from the task vectors (``source``).

        ``source: task_vectors`` loads one fine-tuned model at a time (e_t, c_t per task, then
        averaged), except with ``conflict: pairwise``, which needs every pair of task updates:
        the T task updates of the blocks' diagnostic matrices are then held in memory at once.
        """
        # Pretrained ranks: the process-wide cache (optionally on disk), or one for this run
        # only (the T per-task calls of `source: task_vectors` still share it).
        rank_cache = process_rank_cache(self.rank_cache_dir) if self.rank_cache else {}
        common = dict(device=device, rank_cache=rank_cache, dtype=rank_method_dtype(self.rank_method),
                      cpu_linalg=self.cpu_linalg)
        if self.conflict == "pairwise":
            keys = [k for block in layout.blocks for k in diagnostic_keys(block, theta0)]
            task_updates = []
            for name in modelpool.model_names:
                task_delta = Delta(float_state_dict(modelpool.load_model(name)), theta0)
                task_updates.append({k: task_delta[k] for k in keys})
            updates = [Delta(merged_state, theta0)] if self.source == "merged" else task_updates
            return block_diagnostics(theta0, updates, layout, conflict="pairwise",
                                     conflict_updates=task_updates, **common)
        if self.source == "merged":
            return block_diagnostics(theta0, [Delta(merged_state, theta0)], layout, **common)
        per_task = []
        for name in modelpool.model_names:
            task_state = float_state_dict(modelpool.load_model(name))
            per_task.append(block_diagnostics(theta0, [Delta(task_state, theta0)], layout, **common))
            del task_state
        return combine_diagnostics(per_task)

    def config_record(self) -> Dict[str, Any]:
        """The hyperparameters, JSON-ready."""
        base = self.base_method
        if isinstance(base, BaseAlgorithm):
            base = {"_target_": f"{type(base).__module__}.{type(base).__qualname__}"}
        elif isinstance(base, DictConfig):
            base = OmegaConf.to_container(base, resolve=True)
        else:
            base = dict(base)
        return {
            "method": "larv",
            "base_method": base,
            **{key: getattr(self, key) for key in (
                "gate", "tiers", "tier_assignment", "eta", "rho", "conflict", "source", "apply",
                "non_block_scale", "amplitude", "steepness", "min_scale", "max_scale",
                "lines_alpha", "lines_beta", "block_pattern", "rank_method", "rank_cache",
                "rank_cache_dir", "cpu_linalg")},
        }

    # ------------------------------------------------------------------ run
    # No torch.no_grad() around run(): some base mergers (WUDI) optimise with autograd.
    def run(self, modelpool: Union[BaseModelPool, DictConfig, Dict]):
        if not isinstance(modelpool, BaseModelPool):
            modelpool = BaseModelPool(modelpool)
        if not modelpool.has_pretrained:
            raise ValueError(
                f"LARV needs the pretrained model θ0: the model pool has no '{PRETRAINED}' entry "
                f"(models: {modelpool.all_model_names})"
            )
        if not modelpool.model_names:
            raise ValueError("LARV needs at least one fine-tuned model in the model pool")

        if self.rank_cache and self.rank_cache_dir is not None:
            process_rank_cache(self.rank_cache_dir)  # created and proven writable before any merge

        self._rng_state = torch.random.get_rng_state()
        self._cuda_rng_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        device = self.fabric.device if self._fabric_instance is not None else None
        with self.profile("load pretrained"):
            pretrained = modelpool.load_pretrained_model()
            tied = tied_groups(pretrained.state_dict())
            theta0 = snapshot(float_state_dict(pretrained))
            del pretrained
        check_finite(PRETRAINED, theta0)
        self._check_half_precision(PRETRAINED, theta0, device)
        # Checkpoints on disk: compared with θ0 from their files, before anything is merged
        unchecked = set(self._check_checkpoints(modelpool, theta0, tied))

        def check_model(name: str, state: Mapping[str, torch.Tensor]) -> None:
            self._check_half_precision(name, state, device)
            if name in unchecked:  # a hub download the pool just made: its files are here now
                path = checkpoint_path(modelpool._models[name])
                if path is not None:
                    check_checkpoint(name, path, theta0, tied)
                unchecked.discard(name)

        layout = find_blocks(theta0.keys(), self.block_pattern)
        log.info("LARV: %d blocks (%s), %d parameters outside them", layout.num_blocks,
                 layout.blocks[0].prefix, len(layout.non_block_keys))
        # Copies of in-memory input models are needed only where LARV rescales them, runs the
        # merger twice or reads them again after the merger (see _watched_pool).
        copy_inputs = self.apply == "pre" or self.source == "task_vectors" or self.conflict == "pairwise"
        handed_out: Dict[str, nn.Module] = {}
        watched = self._watched_pool(modelpool, theta0, copy_in_memory=copy_inputs, handed_out=handed_out,
                                     check_model=check_model)

        merged = None
        if self.apply == "post" or self.source == "merged":
            try:
                merged = self._run_base(watched, theta0, "merging the fine-tuned models (the merged "
                                        "update LARV rescales or reads its diagnostics from)")
            except BaseException:
                if PRETRAINED in handed_out:  # a merger that failed half-way: θ0 back all the same
                    restore_(float_state_dict(handed_out[PRETRAINED]), theta0)
                raise
            if aliases_any(merged, list(handed_out.values())):
                # e.g. task arithmetic returns the pool's pretrained model, simple average its
                # first fine-tuned one: never rescale (or restore) the caller's module
                merged = copy.deepcopy(merged)
            if PRETRAINED in handed_out:
                # mergers write the merged weights into the pretrained model: put θ0 back, so the
                # caller's pool can be merged again (fine-tuned models stay as the merger left them)
                restore_(float_state_dict(handed_out[PRETRAINED]), theta0)
            handed_out.clear()
        with self.profile("diagnostics"), torch.no_grad():
            merged_state = float_state_dict(merged) if merged is not None else None
            diagnostics = self._diagnostics(watched, theta0, merged_state, layout, device)
            schedule = build_schedule(
                diagnostics, layout, eta=self.eta, rho=self.rho, non_block_scale=self.non_block_scale,
                gate=self.gate, tiers=self.tiers, tier_assignment=self.tier_assignment,
                amplitude=self.amplitude, steepness=self.steepness, min_scale=self.min_scale,
                max_scale=self.max_scale, lines_alpha=self.lines_alpha, lines_beta=self.lines_beta,
            )
        with self.profile("scaling"):
            if self.apply == "post":
                rescale_update_(merged_state, theta0, schedule.scales)
            else:
                del merged, merged_state
                merged = self._run_base(
                    self._watched_pool(modelpool, theta0, schedule.scales, check_model=check_model), theta0,
                    "merging the rescaled fine-tuned models θ0 + λ ⊙ τ_t (apply: pre)")

        self.schedule = schedule
        self.record = {
            **self.config_record(),
            "block_pattern_used": list(layout.pattern),
            "num_blocks": layout.num_blocks,
            "zero_update_blocks": [r["index"] for r in schedule.rows() if r["zero_update"]],
            "blocks": schedule.rows(),
        }
        log.info("LARV scales per block: %s", [round(r["scale"], 4) for r in self.record["blocks"]])
        log_dir = self.log_dir if self._fabric_instance is not None else None
        if log_dir is not None:
            save_layer_report(self.record, log_dir)
        self.print_profile_summary()
        # Only the model: FusionBench's program_report.json keeps its flat layout
        # ({<task>: ..., "average": ...}); the record is in larv_layers.json and self.record.
        return merged


# ----------------------------------------------------------------------------- named variants
def _variant(class_name: str, merger: str, title: str) -> type:
    cls = type(
        class_name,
        (LARVAlgorithm,),
        {
            "__doc__": f"LARV around {title} (base merger defaults: FusionBench's CLIP settings, "
            f"``{BASE_MERGERS[merger]['_target_']}``).",
            "default_base_method": BASE_MERGERS[merger],
            "__module__": __name__,
        },
    )
    return cls


LARVSimpleAverage = _variant("LARVSimpleAverage", "simple_average", "simple averaging")
LARVTaskArithmetic = _variant("LARVTaskArithmetic", "task_arithmetic", "Task Arithmetic")
LARVTiesMerging = _variant("LARVTiesMerging", "ties_merging", "TIES merging")
LARVTSVM = _variant("LARVTSVM", "tsvm", "TSV-M (task singular vectors)")
LARVIsoC = _variant("LARVIsoC", "iso_c", "Iso-C (isotropic merging in common subspace)")
LARVIsoCTS = _variant("LARVIsoCTS", "iso_cts", "Iso-CTS (common and task-specific subspaces)")
LARVDareTaskArithmetic = _variant("LARVDareTaskArithmetic", "dare_task_arithmetic", "DARE + Task Arithmetic")
LARVWUDI = _variant("LARVWUDI", "wudi", "WUDI merging")
LARVMagMax = _variant("LARVMagMax", "magmax", "MagMax")

#: config name (config/method/larv_<name>.yaml) -> class
LARV_METHODS: Dict[str, type] = {
    "larv_simple_average": LARVSimpleAverage,
    "larv_task_arithmetic": LARVTaskArithmetic,
    "larv_ties_merging": LARVTiesMerging,
    "larv_tsvm": LARVTSVM,
    "larv_iso_c": LARVIsoC,
    "larv_iso_cts": LARVIsoCTS,
    "larv_dare_task_arithmetic": LARVDareTaskArithmetic,
    "larv_wudi": LARVWUDI,
    "larv_magmax": LARVMagMax,
}
