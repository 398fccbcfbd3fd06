"""LARV's settings, declared once: :data:`SETTINGS`, and the checks they are validated with.

Each :class:`Setting` says its name, default, check, whose choice the default is (the paper's,
LiNeS's or ours) and one line of help. From that one table come ``LARVAlgorithm.__init__``'s
validation (:func:`check_settings`), the record written beside each report
(``LARVAlgorithm.config_record``), the LARV keys the sweep table shows (:data:`SWEEP_KEYS`), and
the tests that ``config/method/larv/_defaults.yaml``, the signature and the README agree with it.

Each check raises ``TypeError`` or ``ValueError`` naming the key and the bad value, before any
model is loaded. The allowed choices come from the modules that define them (``gate_table.GATES``,
``schedule.SOURCES``, ...); each gate's range check (settings that would give some block
``lambda < 0`` or every block ``lambda = 0``) is part of its record in ``gate_table.GATES`` (the checks
that need the scores are in ``gates.check_scales``).
"""

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from omegaconf import ListConfig

from .blocks import validate_block_pattern
from .defaults import DEFAULT_TIERS
from .diagnostics import PRECISIONS
from .gate_table import GATES
from .gates import TIER_ASSIGNMENTS
from .linalg import CPU_LINALG
from .schedule import APPLIES, CONFLICTS, SOURCES

__all__ = ["Setting", "SETTINGS", "SETTING_NAMES", "SWEEP_KEYS", "RENAMED", "check_settings", "choice", "real",
           "tiers_value", "alpha_value", "block_pattern_value", "check_unknown_keys", "check_base_method_values",
           "HYDRA_KEYS", "BASE_NUMERIC_KEYS"]


def choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def real(key: str, value: Any, *, minimum: Optional[float] = None, positive: bool = False,
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


def tiers_value(value: Any) -> List[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, ListConfig)):
        raise TypeError(f"tiers must be a list of numbers, got {value!r}")
    tiers = [real(f"tiers[{i}]", v, minimum=0.0) for i, v in enumerate(value)]
    if len(tiers) < 2:
        raise ValueError(f"tiers needs at least 2 levels, got {list(value)!r}")
    return tiers


def alpha_value(key: str, value: Any) -> Union[None, str, float]:
    """``null`` (the gate's own default), ``auto`` (LiNeS's rule) or a finite number."""
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        raise ValueError(f"{key} must be null, 'auto' or a number, got {value!r}")
    return real(key, value)


def block_pattern_value(value: Any) -> Union[None, str, List[str]]:
    if isinstance(value, ListConfig):
        value = list(value)
    validate_block_pattern(value)  # same checks (and messages) as find_blocks
    return value


# Hydra's instantiate keys: consumed by Hydra, but accepted if a caller passes them through.
HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_", "_args_")

# Numeric keys of FusionBench's mergers: checked for a number before the merger sees them.
BASE_NUMERIC_KEYS = ("scaling_factor", "alpha", "threshold", "sparsity_ratio", "common_space_fraction",
                     "iter_num")


def _init_keys(cls: type) -> List[str]:
    """The named parameters of ``cls.__init__`` (auto_register_config keeps the signature)."""
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def check_unknown_keys(cls: type, root: type, kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` for a key that neither LARV nor FusionBench's base classes take
    (``+method.tier=...``, ``LARVIsoC(gatee=...)``), with the closest valid key, or the new name
    of a renamed one (:data:`RENAMED`)."""
    own = _init_keys(root)
    framework = set(HYDRA_KEYS)
    for base in cls.__mro__:
        if base not in (root, object) and "__init__" in base.__dict__ and not issubclass(base, root):
            framework.update(_init_keys(base))
    unknown = [key for key in kwargs if key not in framework]
    if unknown:
        key = unknown[0]
        close = [RENAMED[key]] if key in RENAMED else difflib.get_close_matches(key, own, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?{' It was renamed.' if key in RENAMED else ''})" if close else ""
        raise TypeError(
            f"{cls.__name__}: unknown key '{key}' = {kwargs[key]!r}{hint}; valid keys: {own}"
            + (f" (also unknown: {unknown[1:]})" if len(unknown) > 1 else "")
        )


def check_base_method_values(base_method: Mapping) -> None:
    """Type-check the numeric keys of FusionBench's mergers (``scaling_factor=abc`` otherwise
    fails deep inside the merger)."""
    for key in BASE_NUMERIC_KEYS:
        if key in base_method and base_method[key] is not None:
            real(f"base_method.{key}", base_method[key])


# ----------------------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class Setting:
    """One LARV setting: ``method.<name>`` in the configs, a keyword of ``LARVAlgorithm``."""

    name: str
    default: Any
    #: the checked (and normalised) value, or ``TypeError``/``ValueError`` naming the key
    check: Callable[[Any], Any]
    #: whose choice the default is: ``paper``, ``LiNeS`` or ``ours`` (the paper's full text, and so
    #: its exact values, are not available to us)
    whose: str
    help: str
    #: shapes the schedule (λ): shown per job in the sweep table; ``False``: only how it is computed
    schedule: bool = True


def _choice(name: str, choices: Sequence[str]) -> Callable[[Any], Any]:
    return lambda value: choice(name, value, tuple(choices))


def _real(name: str, **limits: Any) -> Callable[[Any], Any]:
    return lambda value: real(name, value, **limits)


def _flag(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
        return value
    return check


def _folder(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Optional[str]:
        if value is not None and (not isinstance(value, str) or not value):
            raise TypeError(f"{name} must be null or a non-empty path string, got {value!r}")
        return value
    return check


SETTINGS: Tuple[Setting, ...] = (
    Setting("gate", "tiered", _choice("gate", GATES), "paper",
            "tiered (the paper's main variant) | continuous (its ablation) | linear_depth (a fixed ramp, ours) | "
            "lines (LiNeS as published) | identity (the bare merger)"),
    Setting("tiers", list(DEFAULT_TIERS), tiers_value, "ours",
            "tier values, lowest-scored blocks first: 2 or more levels (the paper's), values ours"),
    Setting("tier_assignment", "score", _choice("tier_assignment", TIER_ASSIGNMENTS), "ours",
            "score (rank blocks by s) | depth (split by depth, an ablation)"),
    Setting("eta", 1.0, _real("eta"), "ours", "exponent of the rank contrast e in the score"),
    Setting("rho", 0.5, _real("rho", minimum=0.0), "ours", "exponent of the depth prior ((l+1)/L); 0 removes it"),
    Setting("conflict", "base", _choice("conflict", CONFLICTS), "ours",
            "base (commutator of W0 and D) | pairwise (between the task updates)"),
    Setting("source", "merged", _choice("source", SOURCES), "ours",
            "merged (D = the merger's update) | task_vectors (D = each task vector, averaged)"),
    Setting("apply", "pre", _choice("apply", APPLIES), "paper",
            "pre (the merger runs on the rescaled task vectors) | post (the merged update is rescaled)"),
    Setting("non_block_scale", 1.0, _real("non_block_scale", minimum=0.0), "ours",
            "scale of every parameter outside the blocks"),
    Setting("amplitude", 0.5, _real("amplitude", minimum=0.0), "ours", "a of the continuous gate"),
    Setting("steepness", 3.0, _real("steepness", positive=True), "ours", "gamma of the continuous gate"),
    Setting("min_scale", None, _real("min_scale", minimum=0.0, optional=True), "ours",
            "optional lower clamp of the continuous gate"),
    Setting("max_scale", None, _real("max_scale", minimum=0.0, optional=True), "ours",
            "optional upper clamp of the continuous gate"),
    Setting("lines_alpha", None, lambda value: alpha_value("lines_alpha", value), "LiNeS",
            "alpha of the ramp alpha + beta l/(L-1); null: the gate's own (linear_depth 0.6, ours; lines auto)"),
    Setting("lines_beta", None, _real("lines_beta", optional=True), "LiNeS",
            "beta of the ramp; null: linear_depth 0.6 (ours); lines needs a number (tuned on validation)"),
    Setting("block_pattern", None, block_pattern_value, "ours",
            "null (detect HF CLIP, open_clip or T5 blocks) or a regex (or list) with one group for the index",
            schedule=False),
    Setting("diagnostics_precision", "exact", _choice("diagnostics_precision", PRECISIONS), "ours",
            "exact (float64 ranks and commutators, the reference) | approximate (the same in float32)",
            schedule=False),
    Setting("rank_cache", True, _flag("rank_cache"), "ours",
            "reuse the pretrained matrices' effective ranks across runs in this process", schedule=False),
    Setting("rank_cache_dir", None, _folder("rank_cache_dir"), "ours",
            "null (memory only) or a folder that keeps those ranks across processes", schedule=False),
    Setting("cpu_linalg", "numpy", _choice("cpu_linalg", CPU_LINALG), "ours",
            "numpy | torch: the library of the diagnostics on CPU (equal to round-off)", schedule=False),
)
SETTING_NAMES: Tuple[str, ...] = tuple(s.name for s in SETTINGS)
#: the settings that shape λ: the LARV columns of the sweep table
SWEEP_KEYS: Tuple[str, ...] = tuple(s.name for s in SETTINGS if s.schedule)
#: old key -> new key (an unknown-key error points to the new one)
RENAMED: Dict[str, str] = {"rank_method": "diagnostics_precision"}


def check_settings(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Every declared setting checked (in :data:`SETTINGS`' order), then the rules that tie
    several together: the continuous gate's clamp, the rank cache folder, the gate's own check."""
    checked = {s.name: s.check(values[s.name]) for s in SETTINGS}
    low, high = checked["min_scale"], checked["max_scale"]
    if low is not None and high is not None and low > high:
        raise ValueError(f"min_scale ({low}) must be <= max_scale ({high})")
    if checked["rank_cache_dir"] is not None and not checked["rank_cache"]:
        raise ValueError(f"rank_cache_dir ({checked['rank_cache_dir']!r}) needs rank_cache: true")
    gate = GATES[checked["gate"]]
    gate.check(gate.settings(checked))
    return checked
