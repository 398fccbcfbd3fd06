"""Checks of LARV's settings: every key typed and validated in ``LARVAlgorithm.__init__``.

Each check raises ``TypeError`` or ``ValueError`` naming the key and the bad value, before any
model is loaded. The allowed choices come from the modules that define them (``gate_table.GATES``,
``schedule.SOURCES``, ...); each gate's range check (settings that would give some block
``lambda < 0`` or every block ``lambda = 0``) is part of its record in ``gate_table.GATES`` (the checks
that need the scores are in ``gates.check_scales``).
"""

import difflib
import inspect
import math
from typing import Any, List, Mapping, Optional, Sequence, Union

from omegaconf import ListConfig

from .blocks import validate_block_pattern

__all__ = ["choice", "real", "tiers_value", "alpha_value", "block_pattern_value", "check_unknown_keys",
           "check_base_method_values", "HYDRA_KEYS", "BASE_NUMERIC_KEYS"]


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
    (``+method.tier=...``, ``LARVIsoC(gatee=...)``), with the closest valid key."""
    own = _init_keys(root)
    framework = set(HYDRA_KEYS)
    for base in cls.__mro__:
        if base not in (root, object) and "__init__" in base.__dict__ and not issubclass(base, root):
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


def check_base_method_values(base_method: Mapping) -> None:
    """Type-check the numeric keys of FusionBench's mergers (``scaling_factor=abc`` otherwise
    fails deep inside the merger)."""
    for key in BASE_NUMERIC_KEYS:
        if key in base_method and base_method[key] is not None:
            real(f"base_method.{key}", base_method[key])
