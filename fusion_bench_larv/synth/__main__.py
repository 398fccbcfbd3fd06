"""``python -m fusion_bench_larv.synth build --tasks 8|14|20``: build the tinyclip_synth assets.

Resumable (present artefacts are skipped) and reproducible from ``--seed``. Size and schedule
overrides change the recipe; a cache folder built with another recipe is refused. The default
recipe of seed 0 copies the weights the package ships (``--from-scratch`` trains them);
``ship`` replaces those with a build's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

from .build import Recipe, build, default_cache_dir, ensure
from .model import ModelSize
from .tasks import SUITE_ORDER, SUITES

SEED_HELP = "suite seed: data, initialisation and batch order (default 0)"


def _without_cache_dir(words) -> list:
    """The command-line words without ``--cache-dir`` and its value, in any spelling argparse takes
    (``--cache-dir X``, ``--cache-dir=X``, a prefix such as ``--cache X``): a report records how to
    rerun it, not this machine's cache folder (its ``assets`` names the build)."""
    out, skip = [], False
    for word in words:
        option = word.split("=", 1)[0]
        if skip:
            skip = False
        elif len(option) > 2 and "--cache-dir".startswith(option):
            skip = "=" not in word
        else:
            out.append(word)
    return out


def _whole(text: str) -> int:
    """argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fusion_bench_larv.synth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or complete) the assets of the first N tasks")
    b.add_argument("--tasks", default="8", help="8, 14, 20, or a comma-separated list of task names")
    b.add_argument("--cache-dir", default=None, help=f"cache root (default: {default_cache_dir()})")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads while building (default 1: fastest on a shared machine, reproducible weights)")
    b.add_argument("--jobs", type=_whole, default=1, help="towers fine-tuned at once, each in its own process; they share --threads, at least one each (default 1; the weights do not depend on it)")
    b.add_argument("--from-scratch", action="store_true", help="train every model, even where the package ships the weights of this seed and recipe (synth/shipped.py)")
    recipe = b.add_argument_group("recipe (synth/build.py, Recipe; a build records it in its manifest)")
    for f in dataclasses.fields(Recipe):
        if f.name != "model":
            recipe.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                                help=SEED_HELP if f.name == "seed" else f"default {f.default}")
    size = b.add_argument_group("model size (synth/model.py, ModelSize)")
    for f in dataclasses.fields(ModelSize):
        size.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None, help=f"default {f.default}")
    sh = sub.add_parser("ship", help="copy a complete 8-task build's weights into the package as its shipped weights (synth/shipped.py)")
    sh.add_argument("--cache-dir", required=True, help="cache root of a build made with --from-scratch")
    sh.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    sh.add_argument("--half-deltas", action="store_true", help="store each tower as its task vector in float16 (about half the bytes; synth/shipped.py)")
    sh.add_argument("--out", default=None, help="shipped root (default: the package's own, fusion_bench_larv/synth/shipped)")
    sub.add_parser("list", help="list the task names in suite order")
    st = sub.add_parser("stats", help="task-vector norms, cosines and depth profile of a build (docs/benchmark.md)")
    st.add_argument("--tasks", default="8", help="8, 14, 20, or a comma-separated list of task names")
    st.add_argument("--cache-dir", default=None, help=f"cache root (default: {default_cache_dir()})")
    st.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    lw = sub.add_parser("layerwise", help="layer-wise facts of a build: single-task LiNeS ramp, forgetting, LiNeS vs task arithmetic, depth trends of LARV's diagnostics (synth/layerwise.py)")
    lw.add_argument("--tasks", default="8", help="8, 14, 20, or a comma-separated list of task names")
    lw.add_argument("--cache-dir", default=None, help=f"cache root (default: {default_cache_dir()})")
    lw.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    lw.add_argument("--out", default="layerwise", help="output folder for layerwise_<N>tasks_seed<S>.{json,md} (default: ./layerwise)")
    lw.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for i, name in enumerate(SUITE_ORDER):
            print(f"{i + 1:2d} {name}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "ship":
        from .build import Assets
        from .ship import ship
        from .shipped import shipped_dir

        status = ship(Assets(args.cache_dir, args.seed), root=args.out, half_deltas=args.half_deltas)
        for name, what in status.items():
            print(f"  {name:48s} {what}")
        counts = {what: sum(v == what for v in status.values()) for what in ("same", "changed", "new")}
        print(f"shipped {len(status)} file(s) to {shipped_dir(args.out, args.seed)}: "
              f"{counts['same']} same as the digests recorded before, {counts['changed']} changed, {counts['new']} new")
        return 0
    if args.command == "layerwise":
        return _layerwise(args, argv)
    tasks = list(SUITES[int(args.tasks)]) if args.tasks.isdigit() else [t.strip() for t in args.tasks.split(",")]
    if args.command == "stats":
        from .stats import assets_stats, format_stats

        assets = ensure(tasks, cache_dir=args.cache_dir, seed=args.seed, build_if_missing=False)
        print(format_stats(assets_stats(assets, tasks)))
        return 0
    model = {f.name: getattr(args, f.name) for f in dataclasses.fields(ModelSize) if getattr(args, f.name) is not None}
    recipe_kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if f.name != "model" and getattr(args, f.name) is not None}
    try:  # a bad value is refused before anything is written
        recipe = Recipe(**recipe_kw, model=ModelSize(**model))
    except ValueError as e:
        print(f"build: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    assets = build(tasks, cache_dir=args.cache_dir, recipe=recipe, threads=args.threads, shipped=not args.from_scratch, jobs=args.jobs)
    manifest = assets.read_manifest()
    print(f"assets: {assets.root}")
    for name, seconds in manifest["timings_s"].items():
        print(f"  {name:32s} {seconds:8.1f} s")
    print(f"this run: {time.perf_counter() - start:.1f} s for {len(tasks)} task(s)")
    return 0


def _layerwise(args, argv) -> int:
    """``layerwise``: every input checked before anything is computed or written."""
    import shlex

    from .layerwise import check_seed, check_threads, measure, parse_tasks
    from .layerwise_facts import check_out, write_report

    try:
        tasks = parse_tasks(args.tasks)
        check_out(args.out)
        check_seed(args.seed)
        check_threads(args.threads)
        ensure(tasks, cache_dir=args.cache_dir, seed=args.seed, build_if_missing=False)
    except (ValueError, FileNotFoundError) as e:
        print(f"layerwise: error: {e}", file=sys.stderr)
        return 2
    result = measure(args.tasks, cache_dir=args.cache_dir, seed=args.seed, threads=args.threads)
    words = _without_cache_dir(sys.argv[1:] if argv is None else argv)
    paths = write_report(result, args.out, command="python -m fusion_bench_larv.synth " + shlex.join(words))
    for fact in result["facts"]:
        status = {True: "pass", False: "FAIL", None: ""}[fact["passed"]]
        print(f"  {fact['fact']:24s} {fact['shown']:>8s}  ({fact['threshold']}) {status}")
    print(f"wrote {paths['json']} and {paths['md']} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
