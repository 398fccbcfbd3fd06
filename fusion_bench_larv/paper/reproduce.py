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
                        (``--suite tinyclip``: × 8 splits, clean included = 96; with
                        ``--references`` + 8 × (zero-shot + 4 fine-tuned towers alone) = 136)
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
(``tinyclip_synth{8,14,20}``; one backbone, "TinyCLIP"; robustness on
``tinyclip_synth8_robustness`` with ``+corruption=clean|<corruption>``, generalization on
``tinyclip_synth8_generalization_exp{1,2}``).

The experiments themselves (their jobs, swept axes, defaults and suites) are records in
:mod:`fusion_bench_larv.paper.experiments`; this module turns them into commands. Bare baselines
use the same base hyperparameters as the ``larv_*`` configs (``defaults.BASE_MERGERS``), so every
Δ compares like with like.

Multirun plumbing (every command):

* ``_target_=fusion_bench_larv.runs.programs.ResumableFusionProgram``: a job whose report exists is
  skipped (resume after a crash or preemption) if the config saved in its ``job.json`` equals
  the new job's, reports are written atomically, and each job records ``job.json`` (see
  :mod:`fusion_bench_larv.runs.programs`).
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
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .experiments import (BACKBONES, CLEAN, CORRUPTIONS, EXPERIMENTS, GATE_VARIANTS, MERGERS, SUITES, TASK_SETTINGS,
                          build_jobs, experiment_args)
from ..atomic import atomic_write_json
from .collect import collect
from .jobs import Sweep, group_into_sweeps
from .select import Tuned, selection_records, winner_jobs

log = logging.getLogger("fusion_bench_larv.paper.reproduce")

PROGRAM_TARGET = "fusion_bench_larv.runs.programs.ResumableFusionProgram"

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
    "experiment",
)


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
        f"+experiment={sweep.experiment}",
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


def _experiments(args: argparse.Namespace) -> List[str]:
    if args.experiment == "all":
        return [name for name, e in EXPERIMENTS.items() if args.suite in e.suites]
    return [args.experiment]


def tuned_rows(args: argparse.Namespace) -> "OrderedDict[str, List[Tuned]]":
    """experiment → its rows chosen on validation data (``paper/select.py``), for those that have any."""
    out: "OrderedDict[str, List[Tuned]]" = OrderedDict()
    for exp in _experiments(args):
        spec = EXPERIMENTS[exp]
        if spec.tuned is not None and args.suite in spec.suites:
            out[exp] = spec.tuned(experiment_args(exp, args))
    return out


def plan(args: argparse.Namespace, runs: Optional[list] = None) -> List[Tuple[Sweep, List[str]]]:
    """Every (sweep, command) of the requested experiment(s), in order.

    Phase 1 (``runs`` is None): every job with fixed settings, plus the validation jobs of the
    tuned rows. Phase 2 (``runs``: the collected job folders after phase 1): the test job of each
    tuned row's winner (:func:`fusion_bench_larv.paper.select.winner_jobs`).
    """
    seen = set()
    out: List[Tuple[Sweep, List[str]]] = []
    tuned = tuned_rows(args)
    for exp in _experiments(args):
        exp_args = experiment_args(exp, args)
        if runs is None:
            candidates = build_jobs(exp, exp_args) + [j for t in tuned.get(exp, []) for j in t.val_jobs()]
        else:
            candidates, missing = winner_jobs(tuned.get(exp, []), runs)
            if missing:
                raise RuntimeError(f"{exp}: the validation jobs of {len(missing)} tuned row(s) did not all finish "
                                   f"(e.g. {missing[0]}); rerun the same command to resume")
        jobs = [j for j in candidates if j.overrides not in seen]
        seen.update(j.overrides for j in jobs)
        extra_keys = [o.split("=", 1)[0] for o in list(args.plumbing) + list(args.overrides)]
        sweeps = group_into_sweeps(exp, jobs, EXPERIMENTS[exp].axes, extra_keys)
        if args.expand:
            sweeps = [Sweep(exp, s.keys, OrderedDict((k, [j.get(k)]) for k in s.keys), [j]) for s in sweeps for j in s.jobs]
        for s in sweeps:
            out.append((s, sweep_command(s, len(out), args)))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reproduce-larv",
        description="Run the LARV paper's experiments as Hydra multiruns of `fusion_bench`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    helps = {name: e.help for name, e in EXPERIMENTS.items()}
    helps["all"] = "every experiment (identical jobs run once)"
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
    p.add_argument("--corruptions", nargs="+", choices=[CLEAN, *CORRUPTIONS], default=None,
                   help="robustness: test splits (default: the 7 corruptions; tinyclip: clean and the 7)")
    p.add_argument("--references", action="store_true",
                   help="robustness, tinyclip: also the pretrained model and each fine-tuned tower alone on every split")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = plan(args)
    except ValueError as e:  # a combination the experiment does not have: a usage error, exit code 2
        parser.error(str(e))
    n_jobs = sum(len(s.jobs) for s, _ in commands)
    tuned = tuned_rows(args)
    n_tuned = sum(len(rows) for rows in tuned.values())
    if args.dry_run:
        for _, cmd in commands:
            print(shlex.join(cmd))
        print(f"# {args.experiment}: {n_jobs} jobs in {len(commands)} fusion_bench multirun commands"
              + (f"; then {n_tuned} tuned rows on test, each at the value its validation jobs above choose"
                 if n_tuned else ""))
        return 0
    exe = fusion_bench_executable(args.fusion_bench)
    log.info("%s: %d jobs in %d multirun commands (finished jobs are skipped)", args.experiment, n_jobs, len(commands))
    if _run_commands(exe, commands, args.experiment):
        return 1
    if not n_tuned:
        return 0
    runs = collect(args.output)
    for exp, rows in tuned.items():
        path = Path(args.output) / f"selection_{exp}.json"
        atomic_write_json(path, {"experiment": exp, "rows": selection_records(rows, runs)}, indent=2)
        log.info("%s: %d tuned rows chosen on validation data, recorded in %s", exp, len(rows), path)
    phase2 = plan(args, runs)
    log.info("%s: the %d tuned rows on test (%d multirun commands)", args.experiment,
             sum(len(s.jobs) for s, _ in phase2), len(phase2))
    return 1 if _run_commands(exe, phase2, f"{args.experiment} (tuned, on test)") else 0


def _run_commands(exe: List[str], commands, desc: str) -> int:
    """Run the sweeps; the number that failed (each is logged)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    iterator = tqdm(commands, desc=desc, unit="sweep") if tqdm else commands
    failed = 0
    for sweep, cmd in iterator:
        log.info("running: %s", shlex.join(cmd))
        rc = subprocess.call(exe + cmd[1:])
        if rc != 0:
            failed += 1
            log.error("sweep failed (exit %d): %s", rc, shlex.join(cmd))
    if failed:
        log.error("%d of %d sweeps failed; rerun the same command to resume", failed, len(commands))
    return failed


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
