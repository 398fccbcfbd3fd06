"""Jobs and Hydra sweeps of the paper lab: one job is one ``fusion_bench`` run.

A :class:`Job` is a tuple of identity overrides; :func:`group_into_sweeps` packs an experiment's
jobs into as few Hydra multiruns (cartesian products) as possible, never one job more.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["Job", "Sweep", "job", "sweepable", "group_into_sweeps"]


@dataclass(frozen=True)
class Job:
    """One ``fusion_bench`` run: its identity overrides, in command-line order."""

    overrides: Tuple[Tuple[str, str], ...]

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return dict(self.overrides).get(key, default)

    def keys(self) -> Tuple[str, ...]:
        return tuple(k for k, _ in self.overrides)


@dataclass
class Sweep:
    """A cartesian product of jobs: fixed overrides plus swept axes (``key=v1,v2,...``)."""

    experiment: str
    keys: Tuple[str, ...]
    values: "OrderedDict[str, List[str]]"
    jobs: List[Job] = field(default_factory=list)

    def override_args(self) -> List[str]:
        return [f"{k}={','.join(self.values[k])}" for k in self.keys]


def job(*pairs: Tuple[str, str]) -> Job:
    return Job(tuple((k, str(v)) for k, v in pairs))


#: config groups and the key prefixes a sweep over them must not be combined with (a model-pool
#: alias also selects the task pool)
GROUP_DEPENDENTS: Dict[str, Tuple[str, ...]] = {
    "method": ("method.",),
    "modelpool": ("modelpool.", "taskpool."),
    "taskpool": ("taskpool.",),
}


def sweepable(axis: str, other_keys: Iterable[str]) -> bool:
    """Whether Hydra can sweep ``axis`` while ``other_keys`` are also overridden.

    Hydra composes a multirun's master config with the config groups' *defaults* (a group sweep
    ``method=a,b`` is not applied yet) plus every non-sweep override; an override of a sub-key
    of the swept group (``method.scaling_factor=0.3`` with ``method=a,b``, or
    ``taskpool.tasks=...`` with a model-pool alias sweep) then fails with "Key ... is not in
    struct". Such a group is not swept: its values get one command each.
    """
    prefixes = GROUP_DEPENDENTS.get(axis)
    if prefixes is None:
        return True
    return not any(k.lstrip("+~").startswith(prefixes) for k in other_keys)


def group_into_sweeps(experiment: str, jobs: Sequence[Job], axes: Sequence[str],
                      extra_keys: Iterable[str] = ()) -> List[Sweep]:
    """Group jobs into as few Hydra sweeps (cartesian products over ``axes``) as possible.

    Jobs with the same override keys and the same values on every non-swept key are candidates
    for one sweep; a candidate group that is not a full product is split along its first
    multi-valued axis, recursively, so every emitted sweep expands to exactly its jobs (never
    more). A config group is only swept when no sub-key of it is also overridden
    (:func:`sweepable`); ``extra_keys`` are the keys of the overrides added to every command.
    """
    extra_keys = tuple(extra_keys)
    unique: "OrderedDict[Tuple, Job]" = OrderedDict((j.overrides, j) for j in jobs)
    groups: "OrderedDict[Tuple, Tuple[List[str], List[Job]]]" = OrderedDict()
    for j in unique.values():
        keys = j.keys()
        job_axes = [a for a in axes if a in keys and sweepable(a, [k for k in keys if k != a] + list(extra_keys))]
        fixed = tuple((k, v) for k, v in j.overrides if k not in job_axes)
        groups.setdefault((keys, fixed), (job_axes, []))[1].append(j)
    sweeps: List[Sweep] = []
    for (keys, _), (job_axes, members) in groups.items():
        sweeps.extend(_split_product(experiment, keys, members, job_axes))
    return sweeps


def _split_product(experiment: str, keys, members: List[Job], axes: List[str]) -> List[Sweep]:
    values: "OrderedDict[str, List[str]]" = OrderedDict()
    for k in keys:
        seen: List[str] = []
        for j in members:
            v = j.get(k)
            if v not in seen:
                seen.append(v)
        values[k] = seen
    size = 1
    for a in axes:
        size *= len(values[a])
    if size == len(members):
        return [Sweep(experiment, tuple(keys), values, list(members))]
    for a in axes:
        if len(values[a]) > 1:
            out: List[Sweep] = []
            for v in values[a]:
                out.extend(_split_product(experiment, keys, [j for j in members if j.get(a) == v], axes))
            return out
    raise AssertionError("unreachable: duplicate jobs were removed")
