"""The paper lab's experiments, one declarative record each, and the grid they share.

An :class:`Experiment` holds everything about one ``reproduce-larv`` sub-command: its name and
help, the config groups its sweeps vary, its per-experiment defaults of the command-line filters,
the suites it runs on, and the function that lists its jobs. Adding an experiment is adding one
record to :data:`EXPERIMENTS`; the parser, the plan and the sweeps read it from there.

The grid (backbones, task settings, mergers, gate variants, pools) is FusionBench 0.2.33's
names, used exactly, except the pools of ours listed in docs/reproducing.md. The bare baselines
take their hyperparameters from the merger table, :data:`fusion_bench_larv.defaults.MERGERS` (the
same values as the ``larv_*`` configs' ``base_method``, so every Δ compares like with like), and the gate
ablation's tier levels from ``defaults.DEFAULT_TIERS`` and ``defaults.TWO_LEVEL_TIERS``.
"""

from __future__ import annotations

import argparse
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..defaults import DEFAULT_TIERS, MAIN_MERGERS, TWO_LEVEL_TIERS, Merger
from ..defaults import MERGERS as MERGER_TABLE
from .jobs import Job, job
from .select import Tuned

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


#: the main table's mergers (the merger table's ``main`` records, in table order)
MERGERS: Dict[str, Merger] = OrderedDict((key, MERGER_TABLE[key]) for key in MAIN_MERGERS)
#: Figure 2 shows "five data-free merging methods"; which five is not stated in what we have of
#: the paper. Our guess: all studied mergers but simple averaging. Override with --mergers.
DIAGNOSTIC_MERGERS = ("task_arithmetic", "ties_merging", "tsvm", "iso_c", "iso_cts")


def tiers_override(tiers: Iterable[float]) -> str:
    """``method.tiers`` as the command line spells it: ``[0.6,1.0,1.2]``."""
    return "[" + ",".join(repr(float(t)) for t in tiers) + "]"


#: gate ablation variants: name → LARV overrides. Every variant sets the same keys, so one sweep
#: over mergers and backbones covers a variant.
GATE_VARIANTS: Dict[str, Tuple[Tuple[str, str], ...]] = OrderedDict(
    [
        ("tiered3", (("method.gate", "tiered"), ("method.tiers", tiers_override(DEFAULT_TIERS)),
                     ("method.tier_assignment", "score"))),
        ("tiered2", (("method.gate", "tiered"), ("method.tiers", tiers_override(TWO_LEVEL_TIERS)),
                     ("method.tier_assignment", "score"))),
        ("continuous", (("method.gate", "continuous"),)),
        ("linear_depth", (("method.gate", "linear_depth"),)),
        ("depth_tiers", (("method.gate", "tiered"), ("method.tiers", tiers_override(DEFAULT_TIERS)),
                         ("method.tier_assignment", "depth"))),
    ]
)
#: the gate variant that spells out the shipped defaults: the main table's +LARV job is the
#: same configuration
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
#: --suite tinyclip: the offline analogues of the robustness and generalization pools (each alias
#: selects its task pool; docs/benchmark.md, "Corrupted test splits" and "Generalization pools")
TINYCLIP_ROBUSTNESS_MODELPOOL = "tinyclip_synth8_robustness"
TINYCLIP_GENERALIZATION_MODELPOOLS = ("tinyclip_synth8_generalization_exp1", "tinyclip_synth8_generalization_exp2")
#: the uncorrupted test split of the offline robustness pool (``+corruption=clean``)
CLEAN = "clean"
NLP_MODELPOOL = "Seq2SeqLMPool/flan-t5-base_glue_lora16"
NLP_TASKPOOL = "larv/flan-t5_glue_text_generation"
#: LARV blocks of T5: encoder.block.<i>. then decoder.block.<i>. (docs/method.md, "Blocks").
NLP_BLOCK_PATTERN = "t5"
TA8_TASKS = ("sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd")


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
                jobs.append(job(*prefix, ("method", spec.bare_method), *spec.bare_overrides))
            else:
                jobs.append(job(*prefix, ("method", spec.larv_method), *larv_extra))
    return jobs


def _clip_pools(args, *extra: Tuple[str, str]) -> List[List[Tuple[str, str]]]:
    """The model-pool prefix of every (backbone, task count) of a CLIP experiment."""
    backbones = [TINYCLIP_BACKBONE] if args.suite == "tinyclip" else list(args.backbones)
    return [[("modelpool", clip_modelpool(args.suite, b, n)), *extra] for b in backbones for n in args.tasks]


def _ta8_suffix(backbone: str) -> str:
    return {"b32": "", "b16": "_B16", "l14": "_L14"}[backbone]


def _num(x: float) -> str:
    return repr(float(x))


# ---------------------------------------------------------------------------------------------
# Job builders, one per experiment (``args``: the parsed command line, defaults applied)
# ---------------------------------------------------------------------------------------------


def _main_jobs(args) -> List[Job]:
    return [j for mp in _clip_pools(args) for j in _variant_jobs(mp, args.mergers, args.variants)]


def _ablation_jobs(args, larv_overrides: Sequence[Sequence[Tuple[str, str]]]) -> List[Job]:
    """Per model pool: the bare mergers, then LARV once per entry of ``larv_overrides``."""
    jobs: List[Job] = []
    for mp in _clip_pools(args):
        if "bare" in args.variants:
            jobs += _variant_jobs(mp, args.mergers, ["bare"])
        if "larv" in args.variants:
            for extra in larv_overrides:
                jobs += _variant_jobs(mp, args.mergers, ["larv"], extra)
    return jobs


def _gates_jobs(args) -> List[Job]:
    return _ablation_jobs(args, [GATE_VARIANTS[g] for g in args.gates])


def _tiers_jobs(args) -> List[Job]:
    return _ablation_jobs(args, [[("method.gate", "tiered"), ("method.tiers", f"[{_num(args.shallow)},{_num(mid)},{_num(deep)}]")]
                                 for mid, deep in itertools.product(args.mid, args.deep)])


def _diagnostics_jobs(args) -> List[Job]:
    return [j for mp in _clip_pools(args, ("taskpool", "dummy")) for j in _variant_jobs(mp, args.mergers, ["larv"])]


def _robustness_jobs(args) -> List[Job]:
    if args.suite == "tinyclip":
        return _tinyclip_robustness_jobs(args)
    if args.references or CLEAN in (args.corruptions or ()):
        raise ValueError("robustness: --references and the clean split are offline only (--suite tinyclip); "
                         "FusionBench's clean test sets are the main table's")
    jobs: List[Job] = []
    for c in args.corruptions or CORRUPTIONS:
        prefix = [("modelpool", ROBUSTNESS_MODELPOOL), ("taskpool", ROBUSTNESS_TASKPOOL), ("+corruption", c)]
        jobs += _variant_jobs(prefix, args.mergers, args.variants)
    return jobs


def _tinyclip_robustness_jobs(args) -> List[Job]:
    """Per split (clean, then the corruptions): the mergers, bare and + LARV; with
    ``--references`` also the pretrained model and each fine-tuned tower alone (``method=dummy``)."""
    from ..synth.corrupted import ROBUSTNESS_TASKS

    jobs: List[Job] = []
    for c in args.corruptions or (CLEAN, *CORRUPTIONS):
        prefix = [("modelpool", TINYCLIP_ROBUSTNESS_MODELPOOL), ("+corruption", c)]
        jobs += _variant_jobs(prefix, args.mergers, args.variants)
        if args.references:
            jobs.append(job(*prefix, ("method", "dummy")))
            jobs += [job(*prefix, ("method", "dummy"), ("modelpool.individual", t)) for t in ROBUSTNESS_TASKS]
    return jobs


def _generalization_jobs(args) -> List[Job]:
    if args.suite == "tinyclip":
        pools = [[("modelpool", mp)] for mp in TINYCLIP_GENERALIZATION_MODELPOOLS]
    else:
        pools = [[("modelpool", mp), ("taskpool", GENERALIZATION_TASKPOOL)] for mp in GENERALIZATION_MODELPOOLS]
    return [j for p in pools for j in _variant_jobs(p, args.mergers, args.variants)]


def _nlp_jobs(args) -> List[Job]:
    prefix = [("modelpool", NLP_MODELPOOL), ("taskpool", NLP_TASKPOOL)]
    return _variant_jobs(prefix, args.mergers, args.variants, [("method.block_pattern", NLP_BLOCK_PATTERN)])


def _individual_jobs(args) -> List[Job]:
    if args.suite == "tinyclip":
        # the synthetic pool's `individual` key pools one task's fine-tuned tower alone
        from ..synth.tasks import SUITES as SYNTH_SUITES

        return [job(("modelpool", clip_modelpool(args.suite, TINYCLIP_BACKBONE, n)), ("method", "dummy"),
                    ("modelpool.individual", t))
                for n in args.tasks for t in SYNTH_SUITES[n]]
    jobs = []
    for b in args.backbones:
        name = BACKBONES[b][0]
        for t in TA8_TASKS:
            jobs.append(job(
                ("modelpool", f"CLIPVisionModelPool/{name}_individual"),
                ("taskpool", f"CLIPVisionModelTaskPool/clip-vit-classification_TA8{_ta8_suffix(b)}"),
                ("method", "dummy"),
                ("+individual_task", t),
                ("modelpool.models._pretrained_", f"tanganke/{name}_${{individual_task}}"),
                ("modelpool.processor", f"openai/{name}"),
            ))
    return jobs


def val_taskpool(suite: str, backbone: str, num_tasks: int) -> str:
    """The validation twin of the task pool a CLIP model-pool alias selects (``..._val``)."""
    if suite == "tinyclip":
        return f"larv/tinyclip_synth{num_tasks}_val"
    return f"CLIPVisionModelTaskPool/clip-vit-classification_{TASK_SETTINGS[num_tasks]}{_ta8_suffix(backbone)}_val"


#: the depth-prior comparison's rows with fixed settings (the paper's Appendix D), in table order:
#: row -> LARV overrides (``None``: the bare merger at its FusionBench setting)
DEPTH_FIXED_ROWS: Dict[str, Any] = OrderedDict([
    ("bare", None),
    ("larv", ()),
    ("larv_rho0", (("method.rho", "0.0"),)),
    ("larv_depth_tiers", GATE_VARIANTS["depth_tiers"]),
    ("linear_ramp", GATE_VARIANTS["linear_depth"]),
])
#: LiNeS's β grid (its paper: 0.1...1.0, 0.1...1.5 for TIES)
LINES_BETAS = tuple(round(0.1 * i, 1) for i in range(1, 11))
LINES_BETAS_TIES = tuple(round(0.1 * i, 1) for i in range(1, 16))
#: LARV's tier grid for the validation-tuned row (ours, fixed before any result was read):
#: shallow x deep tier, middle tier 1.0
TUNED_TIERS = tuple((shallow, 1.0, deep) for shallow in (0.4, 0.6, 0.8) for deep in (1.0, 1.4, 1.8))
#: the rows tuned on validation, in table order after the fixed ones
DEPTH_TUNED_ROWS = ("bare_tuned", "lines", "larv_tuned_tiers")


def _depth_jobs(args) -> List[Job]:
    jobs: List[Job] = []
    for mp in _clip_pools(args):
        for m in args.mergers:
            for overrides in DEPTH_FIXED_ROWS.values():
                jobs += _variant_jobs(mp, [m], ["bare" if overrides is None else "larv"], overrides or ())
    return jobs


def _depth_tuned(args) -> List[Tuned]:
    """The rows of ``reproduce-larv depth`` chosen on validation data (see ``paper/select.py``)."""
    out: List[Tuned] = []
    backbones = [TINYCLIP_BACKBONE] if args.suite == "tinyclip" else list(args.backbones)
    for b in backbones:
        for n in args.tasks:
            pool = ("modelpool", clip_modelpool(args.suite, b, n))
            val = val_taskpool(args.suite, b, n)
            for key in args.mergers:
                m = MERGERS[key]
                if m.scale_key:
                    fixed = tuple((k, v) for k, v in m.bare_overrides if k != f"method.{m.scale_key}")
                    out.append(Tuned("bare_tuned", (pool, ("method", m.bare_method), *fixed), f"method.{m.scale_key}",
                                     tuple(_num(v) for v in m.scale_grid), val))
                betas = LINES_BETAS_TIES if key == "ties_merging" else LINES_BETAS
                out.append(Tuned("lines", (pool, ("method", m.larv_method), ("method.gate", "lines"),
                                           ("method.lines_alpha", "auto")), "method.lines_beta",
                                 tuple(_num(v) for v in betas), val))
                out.append(Tuned("larv_tuned_tiers", (pool, ("method", m.larv_method)), "method.tiers",
                                 tuple(tiers_override(t) for t in TUNED_TIERS), val))
    return out


def _zeroshot_jobs(args) -> List[Job]:
    # FusionBench's `dummy` method returns the pool's pretrained model unchanged
    return [job(*mp, ("method", "dummy")) for mp in _clip_pools(args)]


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One ``reproduce-larv`` sub-command.

    Args:
        name: the sub-command.
        help: one line for ``--help``.
        build: ``args -> jobs`` (``args``: the parsed command line, defaults applied).
        axes: the keys its sweeps vary (everything else is fixed within one sweep).
        defaults: command-line filters that default differently for this experiment.
        suites: the suites it can run on (the embedded benchmark has no T5).
    """

    name: str
    help: str
    build: Callable[[argparse.Namespace], List[Job]]
    axes: Tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    suites: Tuple[str, ...] = SUITES
    #: rows whose value is chosen on validation data (``paper/select.py``): ``args -> [Tuned]``
    tuned: Optional[Callable[[argparse.Namespace], List[Tuned]]] = None


EXPERIMENTS: Dict[str, Experiment] = OrderedDict((e.name, e) for e in [
    Experiment("main", "main table: B/32, B/16, L/14 x 8 tasks x 6 mergers x {bare, +LARV}", _main_jobs,
               ("method", "modelpool"), dict(tasks=[8])),
    Experiment("tall", "14- and 20-task tables (same grid)", _main_jobs, ("method", "modelpool"),
               dict(tasks=[14, 20])),
    Experiment("gates", "gate ablation: tiered 3-level/2-level, continuous, linear-depth, depth-only tiers",
               _gates_jobs, ("method", "modelpool"), dict(tasks=[8], backbones=["b32"])),
    Experiment("tiers", "tier sensitivity heatmap (Figure 4): middle x deep tier values vs the bare merger",
               _tiers_jobs, ("method.tiers", "method", "modelpool"),
               dict(tasks=[8], backbones=["b32"], mergers=["iso_c"])),
    Experiment("diagnostics", "per-block e, c, s (Figure 2); no evaluation", _diagnostics_jobs,
               ("method", "modelpool"), dict(tasks=[8], backbones=["b32", "b16"], mergers=list(DIAGNOSTIC_MERGERS))),
    Experiment("robustness", "corruption robustness (Figures 3 and 5) on Cars, EuroSAT, RESISC45, GTSRB "
               "(tinyclip: their analogues, clean split included)",
               _robustness_jobs, ("+corruption", "method", "modelpool.individual")),
    Experiment("generalization", "generalization to unseen tasks (FusionBench's generalization_exp1/exp2)",
               _generalization_jobs, ("modelpool", "method")),
    Experiment("nlp", "Flan-T5-base LoRA-16 GLUE merges, LARV over T5 encoder then decoder blocks", _nlp_jobs,
               ("method",), suites=("fusionbench",)),
    Experiment("individual", "fine-tuned models alone (denominator of the normalized accuracy)", _individual_jobs,
               ("+individual_task", "modelpool.individual", "modelpool")),
    Experiment("depth", "LARV vs depth priors (Appendix D): LARV, rho=0, depth tiers, LiNeS and a linear ramp; "
               "scales, LiNeS's beta and a tier grid tuned on validation data",
               _depth_jobs, ("method.scaling_factor", "method.alpha", "method.lines_beta", "method.tiers", "method",
                             "modelpool"), dict(tasks=[8, 14, 20], backbones=["b32"]), tuned=_depth_tuned),
    Experiment("zeroshot", "the pretrained model alone (the tables' zero-shot row), 8/14/20 tasks", _zeroshot_jobs,
               ("modelpool",), dict(tasks=[8, 14, 20])),
])


def build_jobs(experiment: str, args: argparse.Namespace) -> List[Job]:
    """All jobs of one experiment, after the command-line filters."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment: expected one of {tuple(EXPERIMENTS)}, got {experiment!r}")
    spec = EXPERIMENTS[experiment]
    if args.suite not in spec.suites:
        raise ValueError(
            f"{experiment}: needs FusionBench's real checkpoints and data sets; the embedded "
            f"benchmark (--suite {args.suite}) has no equivalent."
        )
    return spec.build(args)


def experiment_args(experiment: str, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the experiment's own defaults for the filters the user did not give."""
    ns = argparse.Namespace(**vars(args))
    for key, value in EXPERIMENTS[experiment].defaults.items():
        if getattr(args, key) is None:
            setattr(ns, key, value)
    ns.tasks = ns.tasks or [8]
    ns.backbones = ns.backbones or list(BACKBONES)
    ns.mergers = ns.mergers or list(MERGERS)
    return ns
