"""Reproduce the LARV paper's experiments (arXiv 2602.09413) as Hydra multiruns of ``fusion_bench``.

One sub-command per experiment; each expands to one or more ``fusion_bench --multirun`` commands
(a Hydra sweep is a cartesian product, so the jobs of an experiment are grouped into as few
products as possible: e.g. the main table's 36 jobs are 6 sweeps: simple averaging and the six
LARV configs over the three backbones in one, then one per bare merger with hyperparameter
overrides, because Hydra cannot sweep ``method=a,b`` together with ``method.x=...``).

======================  ==========================================================================
sub-command             jobs (real FusionBench checkpoints, ``--suite fusionbench``)
======================  ==========================================================================
``main``                {B/32, B/16, L/14} × 8 tasks × 6 mergers × {bare, +LARV}          = 36
``tall``                {B/32, B/16, L/14} × {14, 20} tasks × 6 mergers × {bare, +LARV}   = 72
``gates``               B/32 × 8 tasks × 6 mergers × (5 gate variants + bare)             = 36
``tiers``               B/32 × 8 tasks × Iso-C × (5 middle × 5 deep tier values + bare)   = 26
``diagnostics``         {B/32, B/16} × 8 tasks × 5 mergers, +LARV, no evaluation          = 10
``robustness``          B/32 × 4 tasks × 6 mergers × {bare, +LARV} × 7 corruptions        = 84
``generalization``      B/32 × {exp1, exp2} × 6 mergers × {bare, +LARV}                   = 24
``nlp``                 Flan-T5-base LoRA-16 × 8 GLUE tasks × 6 mergers × {bare, +LARV}   = 12
``individual``          fine-tuned models evaluated alone (for normalized accuracy)      = 3×8
                        (``--suite tinyclip``: one job per task of each ``--tasks`` pool)
``zeroshot``            the pretrained model alone, 3 backbones × {8, 14, 20} tasks      = 9
``all``                 every experiment above (identical jobs run once)
======================  ==========================================================================

Model pools are FusionBench 0.2.33's names, used exactly; so are its task pools, except two of
ours (``config/taskpool/larv/``, differences in docs/reproducing.md). The CLIP model-pool aliases
``clip-vit-<backbone>_{TA8,TALL14,TALL20}`` (this package's ``config/modelpool``: each selects
``CLIPVisionModelPool/...`` plus the matching ``CLIPVisionModelTaskPool/...`` with the right text
tower); ``CLIPVisionModelPool/clip-vit-base-patch32_robustness_corrupted`` +
``larv/clip-vit-base-patch32_robustness_corrupted`` (ours: FusionBench's evaluation, loading only
the evaluated split; + the root key ``corruption``);
``CLIPVisionModelPool/clip-vit-base-patch32_generalization_exp{1,2}`` evaluated on all 8 tasks
(``CLIPVisionModelTaskPool/clip-vit-classification_TA8``: 6 seen + 2 unseen); and
``Seq2SeqLMPool/flan-t5-base_glue_lora16`` + ``larv/flan-t5_glue_text_generation`` (ours:
FusionBench's, caching under ``path.cache_dir`` keyed by the tokenizer, with an average). With
``--suite tinyclip`` the CLIP experiments run on the embedded offline benchmark instead
(``tinyclip_synth{8,14,20}``; one backbone, "TinyCLIP").

Bare baselines use the same base hyperparameters as the ``larv_*`` configs (task arithmetic and
TIES ``scaling_factor=0.3``, Iso-C/Iso-CTS ``scaling_factor=1.5`` instead of FusionBench's 1.0,
TSV-M ``alpha=1.0``), so every Δ compares like with like.

Multirun plumbing (every command):

* ``_target_=fusion_bench_larv.programs.ResumableFusionProgram``: a job whose report exists is
  skipped (resume after a crash or preemption) if the config saved in its ``job.json`` equals
  the new job's, reports are written atomically, and each job records ``job.json`` (see
  :mod:`fusion_bench_larv.programs`).
* ``path.log_dir=<output>/${hydra:runtime.choices.modelpool}/${hydra:runtime.choices.method}/${hydra:job.override_dirname}``:
  a job directory that is a deterministic function of the job's identity overrides, so a rerun
  finds it and an identical job asked for by two experiments runs once. Plumbing keys are
  excluded from ``override_dirname`` (``hydra.job.config.override_dirname.exclude_keys``).
  ``report_save_path`` keeps FusionBench's ``{log_dir}/program_report.json``.
* Hydra's own bookkeeping (``multirun.yaml``, per-job ``.hydra`` files, logs) goes to
  ``<output>/.hydra/<experiment>/<timestamp>_<k>/<job num>``, never into a finished job's folder.
* ``--launcher basic|joblib|slurm`` picks ``hydra/launcher`` (``joblib`` and ``slurm`` need the
  optional ``launchers`` extra; ``slurm`` uses this package's ``hydra/launcher=larv_slurm``
  example, edit or override its partition/GPUs/time with ``--launcher-arg``).

Examples::

    reproduce-larv main --dry-run
    reproduce-larv main --backbones b32 --mergers iso_c tsvm --launcher joblib --n-jobs 2
    reproduce-larv tall --suite tinyclip --output outputs/larv -- taskpool.dataloader_kwargs.num_workers=0
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

log = logging.getLogger("fusion_bench_larv.reproduce")

PROGRAM_TARGET = "fusion_bench_larv.programs.ResumableFusionProgram"

# ---------------------------------------------------------------------------------------------
# Registries: backbones, task settings, mergers, gate variants
# ---------------------------------------------------------------------------------------------

#: short name → (FusionBench / HF name fragment, label)
BACKBONES: Dict[str, Tuple[str, str]] = OrderedDict(
    b32=("clip-vit-base-patch32", "ViT-B/32"),
    b16=("clip-vit-base-patch16", "ViT-B/16"),
    l14=("clip-vit-large-patch14", "ViT-L/14"),
)
#: number of tasks → FusionBench suffix
TASK_SETTINGS: Dict[int, str] = OrderedDict([(8, "TA8"), (14, "TALL14"), (20, "TALL20")])

SUITES = ("fusionbench", "tinyclip")
TINYCLIP_BACKBONE = "tinyclip"


@dataclass(frozen=True)
class Merger:
    """A base merger: its bare FusionBench config and its LARV wrapper config.

    Args:
        key: Short name used on the command line (``--mergers``).
        label: Name in tables.
        bare_method: FusionBench ``method=`` option.
        bare_overrides: Hyperparameters of the bare run, identical to the ``larv_*`` config's
            ``base_method`` (fair comparison).
        larv_method: This package's ``method=`` option.
    """

    key: str
    label: str
    bare_method: str
    bare_overrides: Tuple[Tuple[str, str], ...]
    larv_method: str


MERGERS: Dict[str, Merger] = OrderedDict(
    (m.key, m)
    for m in [
        Merger("simple_average", "Simple Averaging", "simple_average", (), "larv_simple_average"),
        Merger(
            "task_arithmetic",
            "Task Arithmetic",
            "task_arithmetic",
            (("method.scaling_factor", "0.3"),),
            "larv_task_arithmetic",
        ),
        Merger(
            "ties_merging", "TIES", "ties_merging", (("method.scaling_factor", "0.3"),), "larv_ties_merging"
        ),
        Merger(
            "tsvm",
            "TSV-M",
            "task_singular_vector/TaskSingularVectorMerging",
            (("method.alpha", "1.0"),),
            "larv_tsvm",
        ),
        Merger("iso_c", "Iso-C", "isotropic_merging/iso_c", (("method.scaling_factor", "1.5"),), "larv_iso_c"),
        Merger(
            "iso_cts", "Iso-CTS", "isotropic_merging/iso_cts", (("method.scaling_factor", "1.5"),), "larv_iso_cts"
        ),
    ]
)
#: Figure 2 shows "five data-free merging methods"; which five is not stated in what we have of
#: the paper. Our guess: all studied mergers but simple averaging. Override with --mergers.
DIAGNOSTIC_MERGERS = ("task_arithmetic", "ties_merging", "tsvm", "iso_c", "iso_cts")

#: gate ablation variants: name → LARV overrides. Every variant sets the same keys, so one sweep
#: over mergers and backbones covers a variant.
GATE_VARIANTS: Dict[str, Tuple[Tuple[str, str], ...]] = OrderedDict(
    [
        ("tiered3", (("method.gate", "tiered"), ("method.tiers", "[0.6,1.0,1.2]"), ("method.tier_assignment", "score"))),
        ("tiered2", (("method.gate", "tiered"), ("method.tiers", "[0.8,1.2]"), ("method.tier_assignment", "score"))),
        ("continuous", (("method.gate", "continuous"),)),
        ("linear_depth", (("method.gate", "linear_depth"),)),
        ("depth_tiers", (("method.gate", "tiered"), ("method.tiers", "[0.6,1.0,1.2]"), ("method.tier_assignment", "depth"))),
    ]
)
#: the gate variant that spells out the shipped defaults (config/method/larv/_defaults.yaml; a
#: test keeps them equal): the main table's +LARV job is the same configuration
DEFAULT_GATE_VARIANT = "tiered3"

CORRUPTIONS = ("motion_blur", "impulse_noise", "gaussian_noise", "pixelate", "spatter", "contrast", "jpeg_compression")
ROBUSTNESS_MODELPOOL = "CLIPVisionModelPool/clip-vit-base-patch32_robustness_corrupted"
#: our task pools (config/taskpool/larv/), FusionBench's evaluation with fixes (docs/reproducing.md):
#: the robustness one loads only the evaluated split; the GLUE one caches under path.cache_dir,
#: keyed by the tokenizer, and reports an average over the tasks with a finite score
ROBUSTNESS_TASKPOOL = "larv/clip-vit-base-patch32_robustness_corrupted"
GENERALIZATION_MODELPOOLS = (
    "CLIPVisionModelPool/clip-vit-base-patch32_generalization_exp1",
    "CLIPVisionModelPool/clip-vit-base-patch32_generalization_exp2",
)
GENERALIZATION_TASKPOOL = "CLIPVisionModelTaskPool/clip-vit-classification_TA8"
NLP_MODELPOOL = "Seq2SeqLMPool/flan-t5-base_glue_lora16"
NLP_TASKPOOL = "larv/flan-t5_glue_text_generation"
#: LARV blocks of T5: encoder.block.<i>. then decoder.block.<i>. (see LARV_SPEC "Blocks").
NLP_BLOCK_PATTERN = "t5"
TA8_TASKS = ("sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd")

#: keys that do not define a job (excluded from the job-directory name)
#: (``modelpool.models._pretrained_`` and ``modelpool.processor`` are set by the ``individual``
#: experiment from ``individual_task``, which is in the name)
PLUMBING_KEYS = (
    "path.log_dir",
    "_target_",
    "report_save_path",
    "modelpool",
    "method",
    "print_config",
    "modelpool.models._pretrained_",
    "modelpool.processor",
)

EXPERIMENTS = ("main", "tall", "gates", "tiers", "diagnostics", "robustness", "generalization", "nlp", "individual",
               "zeroshot")

# ---------------------------------------------------------------------------------------------
# Jobs and sweeps
# ---------------------------------------------------------------------------------------------


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


def _job(*pairs: Tuple[str, str]) -> Job:
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


# ---------------------------------------------------------------------------------------------
# Experiment definitions
# ---------------------------------------------------------------------------------------------


def clip_modelpool(suite: str, backbone: str, num_tasks: int) -> str:
    """Model-pool option for a CLIP backbone and task count (each selects its task pool)."""
    if num_tasks not in TASK_SETTINGS:
        raise ValueError(f"tasks: expected one of {list(TASK_SETTINGS)}, got {num_tasks!r}")
    if suite == "tinyclip":
        return f"tinyclip_synth{num_tasks}"
    if backbone not in BACKBONES:
        raise ValueError(f"backbones: expected one of {list(BACKBONES)}, got {backbone!r}")
    return f"{BACKBONES[backbone][0]}_{TASK_SETTINGS[num_tasks]}"


def _variant_jobs(prefix: Sequence[Tuple[str, str]], mergers: Iterable[str], variants: Iterable[str],
                  larv_extra: Sequence[Tuple[str, str]] = ()) -> List[Job]:
    jobs = []
    for m in mergers:
        spec = MERGERS[m]
        for variant in variants:
            if variant == "bare":
                jobs.append(_job(*prefix, ("method", spec.bare_method), *spec.bare_overrides))
            else:
                jobs.append(_job(*prefix, ("method", spec.larv_method), *larv_extra))
    return jobs


def _backbones_for(args) -> List[str]:
    return [TINYCLIP_BACKBONE] if args.suite == "tinyclip" else list(args.backbones)


def build_jobs(experiment: str, args: argparse.Namespace) -> List[Job]:
    """All jobs of one experiment, after the command-line filters."""
    mergers = list(args.mergers)
    variants = list(args.variants)
    jobs: List[Job] = []
    if experiment in ("main", "tall"):
        for b in _backbones_for(args):
            for n in args.tasks:
                jobs += _variant_jobs([("modelpool", clip_modelpool(args.suite, b, n))], mergers, variants)
    elif experiment == "gates":
        for b in _backbones_for(args):
            for n in args.tasks:
                mp = [("modelpool", clip_modelpool(args.suite, b, n))]
                if "bare" in variants:
                    jobs += _variant_jobs(mp, mergers, ["bare"])
                if "larv" in variants:
                    for g in args.gates:
                        jobs += _variant_jobs(mp, mergers, ["larv"], GATE_VARIANTS[g])
    elif experiment == "tiers":
        for b in _backbones_for(args):
            for n in args.tasks:
                mp = [("modelpool", clip_modelpool(args.suite, b, n))]
                if "bare" in variants:
                    jobs += _variant_jobs(mp, mergers, ["bare"])
                if "larv" in variants:
                    for mid, deep in itertools.product(args.mid, args.deep):
                        tiers = f"[{_num(args.shallow)},{_num(mid)},{_num(deep)}]"
                        jobs += _variant_jobs(mp, mergers, ["larv"], [("method.gate", "tiered"), ("method.tiers", tiers)])
    elif experiment == "diagnostics":
        for b in _backbones_for(args):
            for n in args.tasks:
                mp = [("modelpool", clip_modelpool(args.suite, b, n)), ("taskpool", "dummy")]
                jobs += _variant_jobs(mp, mergers, ["larv"])
    elif experiment == "robustness":
        _only_fusionbench(args, experiment)
        for c in args.corruptions:
            prefix = [("modelpool", ROBUSTNESS_MODELPOOL), ("taskpool", ROBUSTNESS_TASKPOOL), ("+corruption", c)]
            jobs += _variant_jobs(prefix, mergers, variants)
    elif experiment == "generalization":
        _only_fusionbench(args, experiment)
        for mp in GENERALIZATION_MODELPOOLS:
            jobs += _variant_jobs([("modelpool", mp), ("taskpool", GENERALIZATION_TASKPOOL)], mergers, variants)
    elif experiment == "nlp":
        _only_fusionbench(args, experiment)
        prefix = [("modelpool", NLP_MODELPOOL), ("taskpool", NLP_TASKPOOL)]
        jobs += _variant_jobs(prefix, mergers, variants, [("method.block_pattern", NLP_BLOCK_PATTERN)])
    elif experiment == "individual":
        if args.suite == "tinyclip":
            # the synthetic pool's `individual` key pools one task's fine-tuned tower alone
            from .synth.tasks import SUITES as SYNTH_SUITES

            for n in args.tasks:
                for t in SYNTH_SUITES[n]:
                    jobs.append(_job(("modelpool", clip_modelpool(args.suite, TINYCLIP_BACKBONE, n)),
                                     ("method", "dummy"), ("modelpool.individual", t)))
            return jobs
        for b in args.backbones:
            name = BACKBONES[b][0]
            for t in TA8_TASKS:
                jobs.append(
                    _job(
                        ("modelpool", f"CLIPVisionModelPool/{name}_individual"),
                        ("taskpool", f"CLIPVisionModelTaskPool/clip-vit-classification_TA8{_ta8_suffix(b)}"),
                        ("method", "dummy"),
                        ("+individual_task", t),
                        ("modelpool.models._pretrained_", f"tanganke/{name}_${{individual_task}}"),
                        ("modelpool.processor", f"openai/{name}"),
                    )
                )
    elif experiment == "zeroshot":
        # FusionBench's `dummy` method returns the pool's pretrained model unchanged
        for b in _backbones_for(args):
            for n in args.tasks:
                jobs.append(_job(("modelpool", clip_modelpool(args.suite, b, n)), ("method", "dummy")))
    else:
        raise ValueError(f"experiment: expected one of {EXPERIMENTS}, got {experiment!r}")
    return jobs


#: swept axes per experiment (everything else is fixed within one sweep)
SWEEP_AXES: Dict[str, Tuple[str, ...]] = {
    "main": ("method", "modelpool"),
    "tall": ("method", "modelpool"),
    "gates": ("method", "modelpool"),
    "tiers": ("method.tiers", "method", "modelpool"),
    "diagnostics": ("method", "modelpool"),
    "robustness": ("+corruption", "method"),
    "generalization": ("modelpool", "method"),
    "nlp": ("method",),
    "individual": ("+individual_task", "modelpool.individual", "modelpool"),
    "zeroshot": ("modelpool",),
}


def _ta8_suffix(backbone: str) -> str:
    return {"b32": "", "b16": "_B16", "l14": "_L14"}[backbone]


def _num(x: float) -> str:
    return repr(float(x))


def _only_fusionbench(args, experiment: str) -> None:
    if args.suite != "fusionbench":
        raise SystemExit(
            f"{experiment}: needs FusionBench's real checkpoints and data sets; the embedded "
            f"benchmark (--suite {args.suite}) has no equivalent."
        )


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def job_dir_template(output: str) -> str:
    """``path.log_dir`` of every job (see the module docstring)."""
    return (
        f"{output}/${{hydra:runtime.choices.modelpool}}/${{hydra:runtime.choices.method}}/"
        "${hydra:job.override_dirname}"
    )


def sweep_command(sweep: Sweep, index: int, args: argparse.Namespace) -> List[str]:
    """The ``fusion_bench --multirun`` argument list of one sweep."""
    output = os.path.abspath(args.output)  # jobs on other hosts / cwds (SLURM) find the same folders
    plumbing_keys = list(PLUMBING_KEYS) + [o.split("=", 1)[0].lstrip("+~") for o in args.plumbing]
    exclude = "[" + ",".join(dict.fromkeys(plumbing_keys)) + "]"
    cmd = ["fusion_bench", "--multirun"]
    cmd += sweep.override_args()
    cmd += [
        f"_target_={PROGRAM_TARGET}",
        f"path.log_dir={job_dir_template(output)}",
        f"hydra.job.config.override_dirname.exclude_keys={exclude}",
        f"hydra.sweep.dir={output}/.hydra/{sweep.experiment}/${{now:%Y-%m-%d_%H-%M-%S-%f}}_{index}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    cmd += launcher_overrides(args)
    cmd += list(args.plumbing)
    cmd += list(args.overrides)
    return cmd


def launcher_overrides(args: argparse.Namespace) -> List[str]:
    out: List[str] = []
    if args.launcher == "joblib":
        out.append("hydra/launcher=joblib")
        if args.n_jobs is not None:
            out.append(f"hydra.launcher.n_jobs={args.n_jobs}")
    elif args.launcher == "slurm":
        out.append(f"hydra/launcher={args.slurm_config}")
    if args.gpus:
        out.append(f"+gpus=[{','.join(str(g) for g in args.gpus)}]")
    out += list(args.launcher_arg)
    return out


def plan(args: argparse.Namespace) -> List[Tuple[Sweep, List[str]]]:
    """Every (sweep, command) of the requested experiment(s), in order."""
    experiments = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if args.experiment == "all" and args.suite != "fusionbench":
        experiments = [e for e in experiments if e in ("main", "tall", "gates", "tiers", "diagnostics", "individual",
                                                          "zeroshot")]
    seen = set()
    out: List[Tuple[Sweep, List[str]]] = []
    for exp in experiments:
        exp_args = _experiment_defaults(exp, args)
        jobs = [j for j in build_jobs(exp, exp_args) if j.overrides not in seen]
        seen.update(j.overrides for j in jobs)
        extra_keys = [o.split("=", 1)[0] for o in list(args.plumbing) + list(args.overrides)]
        sweeps = group_into_sweeps(exp, jobs, SWEEP_AXES[exp], extra_keys)
        if args.expand:
            sweeps = [Sweep(exp, s.keys, OrderedDict((k, [j.get(k)]) for k in s.keys), [j]) for s in sweeps for j in s.jobs]
        for s in sweeps:
            out.append((s, sweep_command(s, len(out), args)))
    return out


#: defaults that differ per experiment (None = use the parser's default for all experiments)
EXPERIMENT_DEFAULTS = {
    "main": dict(tasks=[8]),
    "tall": dict(tasks=[14, 20]),
    "gates": dict(tasks=[8], backbones=["b32"]),
    "tiers": dict(tasks=[8], backbones=["b32"], mergers=["iso_c"]),
    "diagnostics": dict(tasks=[8], backbones=["b32", "b16"], mergers=list(DIAGNOSTIC_MERGERS)),
    "robustness": dict(),
    "generalization": dict(),
    "nlp": dict(),
    "individual": dict(),
    "zeroshot": dict(tasks=[8, 14, 20]),
}


def _experiment_defaults(exp: str, args: argparse.Namespace) -> argparse.Namespace:
    ns = argparse.Namespace(**vars(args))
    for key, value in EXPERIMENT_DEFAULTS[exp].items():
        if getattr(args, key) is None:
            setattr(ns, key, value)
    ns.tasks = ns.tasks or [8]
    ns.backbones = ns.backbones or list(BACKBONES)
    ns.mergers = ns.mergers or list(MERGERS)
    return ns


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reproduce-larv",
        description="Run the LARV paper's experiments as Hydra multiruns of `fusion_bench`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    helps = {
        "main": "main table: B/32, B/16, L/14 x 8 tasks x 6 mergers x {bare, +LARV}",
        "tall": "14- and 20-task tables (same grid)",
        "gates": "gate ablation: tiered 3-level/2-level, continuous, linear-depth, depth-only tiers",
        "tiers": "tier sensitivity heatmap (Figure 4): middle x deep tier values vs the bare merger",
        "diagnostics": "per-block e, c, s (Figure 2); no evaluation",
        "robustness": "corruption robustness (Figures 3 and 5) on Cars, EuroSAT, RESISC45, GTSRB",
        "generalization": "generalization to unseen tasks (FusionBench's generalization_exp1/exp2)",
        "nlp": "Flan-T5-base LoRA-16 GLUE merges, LARV over T5 encoder then decoder blocks",
        "individual": "fine-tuned models alone (denominator of the normalized accuracy)",
        "zeroshot": "the pretrained model alone (the tables' zero-shot row), 8/14/20 tasks",
        "all": "every experiment (identical jobs run once)",
    }
    for name, help_ in helps.items():
        p = sub.add_parser(name, help=help_, description=help_)
        _add_common(p)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", choices=SUITES, default="fusionbench",
                   help="fusionbench: real checkpoints (default); tinyclip: the embedded offline benchmark")
    p.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=None)
    p.add_argument("--tasks", nargs="+", type=int, choices=list(TASK_SETTINGS), default=None)
    p.add_argument("--mergers", nargs="+", choices=list(MERGERS), default=None)
    p.add_argument("--variants", nargs="+", choices=["bare", "larv"], default=["bare", "larv"])
    p.add_argument("--gates", nargs="+", choices=list(GATE_VARIANTS), default=list(GATE_VARIANTS))
    p.add_argument("--shallow", type=float, default=0.6, help="tiers: fixed shallow tier value")
    p.add_argument("--mid", nargs="+", type=float, default=[0.8, 0.9, 1.0, 1.1, 1.2], help="tiers: middle tier values")
    p.add_argument("--deep", nargs="+", type=float, default=[1.0, 1.1, 1.2, 1.3, 1.4], help="tiers: deep tier values")
    p.add_argument("--corruptions", nargs="+", choices=list(CORRUPTIONS), default=list(CORRUPTIONS))
    p.add_argument("--output", default="outputs/larv", help="root of the job folders (default: %(default)s)")
    p.add_argument("--launcher", choices=["basic", "joblib", "slurm"], default="basic")
    p.add_argument("--n-jobs", type=int, default=None, help="joblib: parallel processes")
    p.add_argument("--slurm-config", default="larv_slurm", help="slurm: hydra/launcher option (default: %(default)s)")
    p.add_argument("--gpus", nargs="+", type=int, default=None,
                   help="GPU ids each local job claims one of (joblib: one job per GPU)")
    p.add_argument("--launcher-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra hydra.launcher.* override, e.g. hydra.launcher.partition=gpu")
    p.add_argument("--plumbing", action="append", default=[], metavar="KEY=VALUE",
                   help="override that does not define the job (paths, workers): not in the job folder name")
    p.add_argument("--expand", action="store_true", help="one single-job sweep per job")
    p.add_argument("--dry-run", action="store_true", help="print the fusion_bench commands and exit")
    p.add_argument("--fusion-bench", default=None, help="fusion_bench executable (default: next to python, or PATH)")
    p.add_argument("overrides", nargs="*", help="extra overrides for every job (part of the job identity)")


def fusion_bench_executable(explicit: Optional[str] = None) -> List[str]:
    if explicit:
        return shlex.split(explicit)
    candidate = os.path.join(os.path.dirname(sys.executable), "fusion_bench")
    if os.path.exists(candidate):
        return [candidate]
    found = shutil.which("fusion_bench")
    if found:
        return [found]
    return [sys.executable, "-m", "fusion_bench.scripts.cli"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``reproduce-larv`` / ``scripts/reproduce_paper.py``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    commands = plan(args)
    n_jobs = sum(len(s.jobs) for s, _ in commands)
    if args.dry_run:
        for _, cmd in commands:
            print(shlex.join(cmd))
        print(f"# {args.experiment}: {n_jobs} jobs in {len(commands)} fusion_bench multirun commands")
        return 0
    exe = fusion_bench_executable(args.fusion_bench)
    log.info("%s: %d jobs in %d multirun commands (finished jobs are skipped)", args.experiment, n_jobs, len(commands))
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    iterator = tqdm(commands, desc=args.experiment, unit="sweep") if tqdm else commands
    failed = 0
    for sweep, cmd in iterator:
        log.info("running: %s", shlex.join(cmd))
        rc = subprocess.call(exe + cmd[1:])
        if rc != 0:
            failed += 1
            log.error("sweep failed (exit %d): %s", rc, shlex.join(cmd))
    if failed:
        log.error("%d of %d sweeps failed; rerun the same command to resume", failed, len(commands))
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
