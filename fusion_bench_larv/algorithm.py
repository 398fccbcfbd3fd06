"""LARV as a FusionBench algorithm: wraps ANY task-vector merger given as ``base_method``.

LARV (Layer-wise Adaptive Rescaling Veneer; Wang, Deng, Dou, Bi, Lu, arXiv 2602.09413) gives
every transformer block l a data-free scale lambda_l computed from the weights alone and rescales
that block's task vectors before the merger aggregates them (``apply: pre``, the default: the
paper's words) or the block's merged update (``apply: post``):

    θ = M(θ0, {λ ⊙ τ_t})                (pre, the paper's "before aggregation")
    θ = θ0 + λ ⊙ M(θ0, {τ_t})           (post)

For mergers that are positively homogeneous per block (the merger table's ``homogeneous``:
task arithmetic, simple averaging, TSV-M, Iso-C, Iso-CTS, DARE with its mask fixed, MagMax) the
two are the same model, and ``pre`` runs the cheaper ``post`` path (one merge); TIES and WUDI run
``pre`` literally (the merger runs twice: once for the diagnostics, once on the rescaled models).

docs/method.md defines every quantity and says which choices are the paper's and which are ours.
The math lives in ``diagnostics.py`` and ``gates.py``, the name → block → scale resolution in
``blocks.py`` and ``schedule.py``, the settings' checks in ``settings.py`` and the checked pool in
``watched_pool.py``. This module only loads, calls the base merger, applies the schedule,
records and returns. The named subclasses at the end (``LARVIsoC``, ...) differ only in their
default ``base_method``, taken from ``defaults.BASE_MERGERS``.
"""

import copy
import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from omegaconf import DictConfig
from torch import nn

from fusion_bench import BaseAlgorithm, BaseModelPool, auto_register_config
from fusion_bench.mixins import LightningFabricMixin, SimpleProfilerMixin
from fusion_bench.utils import instantiate

from .blocks import BlockLayout, diagnostic_keys, find_blocks
from .defaults import BASE_MERGERS, DEFAULT_TIERS, Merger, config_of, merger_of, unit_scale_config
from .diagnostics import block_diagnostics, combine_diagnostics, precision_dtype
from .gate_table import GATES, Gate
from .gates import lines_alpha
from .rank_cache import process_rank_cache
from .report import save_layer_report
from .schedule import LayerSchedule, build_schedule
from .settings import SETTING_NAMES, check_base_method_values, check_settings, check_unknown_keys
from .state_dicts import Delta, check_compatible, check_finite, float_state_dict, rescale_update_, restore_, task_sum_l1
from .watched_pool import PRETRAINED, PoolModelError, aliases_any, checked_pool, load_theta0, watched_pool

log = logging.getLogger(__name__)

#: the settings the gates read (``gate_table.Gate.keys``)
GATE_KEYS = tuple(dict.fromkeys(key for gate in GATES.values() for key in gate.keys))


# ----------------------------------------------------------------------------- validation
class BaseMergerError(RuntimeError):
    """The base merger failed: the message says which merger, its config and LARV's phase; the
    merger's own exception is chained (``__cause__``)."""


# ----------------------------------------------------------------------------- algorithm
@auto_register_config
class LARVAlgorithm(LightningFabricMixin, SimpleProfilerMixin, BaseAlgorithm):
    """LARV around any FusionBench task-vector merger.

    Args:
        base_method: the merger to wrap: a config with ``_target_`` (instantiated without
            recursion, with this program's fabric handed over) or a ``BaseAlgorithm``. The
            named subclasses (``LARVIsoC``, ...) default it to FusionBench's CLIP settings.
        gate, tiers, ..., cpu_linalg: the LARV settings, declared once in
            ``settings.SETTINGS`` (default, check, whose choice, help), explained in the README's
            config reference and defined in docs/method.md. ``gate`` picks a record of
            ``gate_table.GATES``; ``apply: pre`` runs as ``post`` where both give the same model
            (a merger the merger table marks homogeneous), and ``gate: lines`` always rescales
            the merged update (LiNeS's rule).

    Raises (see README "Errors"): ``TypeError`` for an unknown key (with the closest valid one)
    or a non-numeric base-merger value; ``ValueError`` for a bad value, a schedule with some
    λ < 0 or every λ = 0, a model or checkpoint that does not match θ0, a half-precision pool
    with an SVD merger on CPU, or an unusable ``rank_cache_dir``; ``BaseMergerError`` for an
    error inside the base merger (chained).
    """

    #: key of ``defaults.BASE_MERGERS`` that ``base_method`` defaults to (named subclasses)
    merger: Optional[str] = None
    #: run the cheaper ``post`` path for ``apply: pre`` where the merger table marks the merger
    #: homogeneous (the same model); tests switch it off to compare the two paths
    _pre_as_post: bool = True

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
        apply: str = "pre",
        non_block_scale: float = 1.0,
        amplitude: float = 0.5,
        steepness: float = 3.0,
        min_scale: Optional[float] = None,
        max_scale: Optional[float] = None,
        lines_alpha: Union[None, str, float] = None,
        lines_beta: Optional[float] = None,
        block_pattern: Union[None, str, Sequence[str]] = None,
        diagnostics_precision: str = "exact",
        rank_cache: bool = True,
        rank_cache_dir: Optional[str] = None,
        cpu_linalg: str = "numpy",
        **kwargs,
    ):
        check_unknown_keys(type(self), LARVAlgorithm, kwargs)
        super().__init__(**kwargs)
        if base_method is None and self.merger is not None:
            base_method = copy.deepcopy(BASE_MERGERS[self.merger])
        if base_method is None:
            raise ValueError("base_method is required: a merger config with `_target_` or a BaseAlgorithm")
        if not isinstance(base_method, BaseAlgorithm):
            if not isinstance(base_method, (Mapping, DictConfig)) or "_target_" not in base_method:
                raise TypeError(
                    f"base_method must be a config with `_target_` or a BaseAlgorithm, got {base_method!r}"
                )
            check_base_method_values(base_method)
        self.base_method = base_method
        given = {name: value for name, value in locals().items() if name in SETTING_NAMES}
        for name, value in check_settings(given).items():
            setattr(self, name, value)
        self._base_run = self.base_method  # the merger as run() merges with it (see _base_for_run)
        self.schedule: Optional[LayerSchedule] = None
        self.record: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ helpers
    def _gate_values(self) -> Dict[str, Any]:
        """The settings any gate may read (each gate picks its own keys, ``gate_table.Gate.settings``)."""
        return {key: getattr(self, key) for key in GATE_KEYS}

    def _base_for_run(self, gate: Gate, merger: Optional[Merger]):
        """``base_method`` as this run merges with it: the configured one, or, for a gate that
        rescales the update at scale 1 (LiNeS), the same with its global scaling factor at 1."""
        return unit_scale_config(self.base_method, merger, why=f"gate {gate.name}") if gate.unit_scale \
            else self.base_method

    def _path(self, gate: Gate, merger: Optional[Merger]) -> str:
        """The application this run performs: ``post`` where the gate rescales the merged update
        (LiNeS), or where ``pre`` gives the same model (a per-block homogeneous merger of the
        merger table), else ``apply``."""
        if gate.post_only or (self.apply == "pre" and self._pre_as_post and merger is not None and merger.homogeneous):
            return "post"
        return self.apply

    def _new_base_merger(self) -> BaseAlgorithm:
        """A fresh base merger, with this program's fabric and program handed over."""
        base = self._base_run
        if isinstance(base, BaseAlgorithm):
            merger = base
        else:
            merger = instantiate(base, _recursive_=False)
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

    def _diagnostics(self, modelpool, theta0, merged_state, layout: BlockLayout, device):
        """Block diagnostics from the merged update or from the task vectors (``source``).

        ``source: task_vectors`` loads one fine-tuned model at a time (e_t, c_t per task, then
        averaged), except with ``conflict: pairwise``, which needs every pair of task updates:
        the T task updates of the blocks' diagnostic matrices are then held in memory at once.
        """
        # Pretrained ranks: the process-wide cache (optionally on disk), or one for this run
        # only (the T per-task calls of `source: task_vectors` still share it).
        rank_cache = process_rank_cache(self.rank_cache_dir) if self.rank_cache else {}
        common = dict(device=device, rank_cache=rank_cache, dtype=precision_dtype(self.diagnostics_precision),
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
        return {"method": "larv", "base_method": config_of(self.base_method),
                **{name: getattr(self, name) for name in SETTING_NAMES}}

    # ------------------------------------------------------------------ run
    # No torch.no_grad() around run(): some base mergers (WUDI) optimise with autograd.
    def run(self, modelpool: Union[BaseModelPool, DictConfig, Dict]):
        modelpool = checked_pool(modelpool)
        gate, merger = GATES[self.gate], merger_of(self.base_method)
        path = self._prepare(gate, merger)
        device = self.fabric.device if self._fabric_instance is not None else None
        with self.profile("load pretrained"):
            theta0, check_model = load_theta0(modelpool, self.base_method, device)
        layout = find_blocks(theta0.keys(), self.block_pattern)
        log.info("LARV: %d blocks (%s), %d parameters outside them", layout.num_blocks,
                 layout.blocks[0].prefix, len(layout.non_block_keys))
        settings = self._gate_values()
        auto_alpha = gate.settings(settings).get("lines_alpha") == "auto"
        # Copies of in-memory input models are needed only where LARV rescales them, runs the
        # merger twice or reads them again after the merger (see watched_pool.watched_pool).
        copy_inputs = path == "pre" or self.source == "task_vectors" or self.conflict == "pairwise" or auto_alpha
        handed_out: Dict[str, nn.Module] = {}
        watched = watched_pool(modelpool, theta0, copy_in_memory=copy_inputs, handed_out=handed_out,
                               check_model=check_model)
        merged = self._merge_once(watched, theta0, handed_out) if path == "post" or self.source == "merged" else None
        with self.profile("diagnostics"), torch.no_grad():
            merged_state = float_state_dict(merged) if merged is not None else None
            diagnostics = self._diagnostics(watched, theta0, merged_state, layout, device)
            if auto_alpha:
                settings["lines_alpha"] = self._lines_alpha(watched, theta0, merged_state)
            resolved = gate.settings(settings)
            schedule = build_schedule(
                diagnostics, layout, eta=self.eta, rho=self.rho, gate=gate, settings=resolved,
                non_block_scale=resolved[gate.non_block_key] if gate.non_block_key else self.non_block_scale,
            )
        with self.profile("scaling"):
            if path == "post":
                rescale_update_(merged_state, theta0, schedule.scales)
            else:
                del merged, merged_state
                merged = self._run_base(
                    watched_pool(modelpool, theta0, schedule.scales, check_model=check_model), theta0,
                    "merging the rescaled fine-tuned models θ0 + λ ⊙ τ_t (apply: pre)")
        self._record(schedule, layout, path=path, gate_settings=resolved)
        return merged

    def _prepare(self, gate: Gate, merger: Optional[Merger]) -> str:
        """Before anything is loaded: the rank cache folder proven writable, the path this run
        takes and the merger as it runs (:meth:`_path`, :meth:`_base_for_run`), the RNG state
        every base-merger run starts from. Returns the path."""
        if self.rank_cache and self.rank_cache_dir is not None:
            process_rank_cache(self.rank_cache_dir)  # created and proven writable before any merge
        path, self._base_run = self._path(gate, merger), self._base_for_run(gate, merger)
        if path != self.apply:
            log.info("LARV: apply %s runs as post (%s)", self.apply, "LiNeS rescales the merged update"
                     if gate.post_only else f"{merger.label} is homogeneous per block: the same model, one merge")
        self._rng_state = torch.random.get_rng_state()
        self._cuda_rng_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return path

    @staticmethod
    def _lines_alpha(watched: BaseModelPool, theta0, merged_state) -> float:
        """LiNeS's α: ||Σ_t τ_t||_1 / (T ||τ_merged||_1), τ_merged the merger's update at scale 1."""
        states = (float_state_dict(watched.load_model(name)) for name in watched.model_names)
        return lines_alpha(task_sum_l1(states, theta0), task_sum_l1([merged_state], theta0), len(watched.model_names))

    def _merge_once(self, watched: BaseModelPool, theta0, handed_out: Dict[str, nn.Module]) -> nn.Module:
        """The base merger's model, never aliasing the caller's modules; θ0 put back into an
        in-memory pretrained model the merger wrote into."""
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
        return merged

    def _record(self, schedule: LayerSchedule, layout: BlockLayout, *, path: str,
                gate_settings: Mapping[str, Any]) -> None:
        """``self.schedule`` and ``self.record``; ``larv_layers.{json,csv,png}`` in the log dir."""
        self.schedule = schedule
        base_run = self._base_run
        self.record = {
            **self.config_record(),
            "apply_used": path,
            "gate_settings": dict(gate_settings),
            "base_method_used": config_of(base_run),
            "score_depth_spearman": schedule.score_depth_spearman,
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


# ----------------------------------------------------------------------------- named variants
# One per config/method/larv_<merger>.yaml; `base_method` defaults to defaults.BASE_MERGERS[merger].


class LARVSimpleAverage(LARVAlgorithm):
    """LARV around simple averaging."""
    merger = "simple_average"


class LARVTaskArithmetic(LARVAlgorithm):
    """LARV around Task Arithmetic."""
    merger = "task_arithmetic"


class LARVTiesMerging(LARVAlgorithm):
    """LARV around TIES merging."""
    merger = "ties_merging"


class LARVTSVM(LARVAlgorithm):
    """LARV around TSV-M (task singular vectors)."""
    merger = "tsvm"


class LARVIsoC(LARVAlgorithm):
    """LARV around Iso-C (isotropic merging in the common subspace)."""
    merger = "iso_c"


class LARVIsoCTS(LARVAlgorithm):
    """LARV around Iso-CTS (common and task-specific subspaces)."""
    merger = "iso_cts"


class LARVDareTaskArithmetic(LARVAlgorithm):
    """LARV around DARE + Task Arithmetic."""
    merger = "dare_task_arithmetic"


class LARVWUDI(LARVAlgorithm):
    """LARV around WUDI merging."""
    merger = "wudi"


class LARVMagMax(LARVAlgorithm):
    """LARV around MagMax."""
    merger = "magmax"


#: config name (config/method/larv_<merger>.yaml) -> class
LARV_METHODS: Dict[str, type] = {
    f"larv_{cls.merger}": cls
    for cls in (LARVSimpleAverage, LARVTaskArithmetic, LARVTiesMerging, LARVTSVM, LARVIsoC, LARVIsoCTS,
                LARVDareTaskArithmetic, LARVWUDI, LARVMagMax)
}
