"""How much faster a build fine-tunes its towers in worker processes (``build --jobs N``).

    python scripts/bench_towers.py [--tasks 4] [--jobs 2] [--cache-dir DIR] [--seed 0]

Builds (or finds) the first ``--tasks`` tasks of the suite in ``--cache-dir`` (default: a
temporary folder, where the default recipe of seed 0 copies the package's shipped weights), then
fine-tunes those towers again twice in scratch copies of that build, timed in this one run: one
by one in this process, and ``--jobs`` at a time in worker processes (one torch thread each, as a
build). It prints both times, their ratio, the load average, and whether the two runs' towers
are byte for byte the same as each other and as the build's own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _copy_without_towers(assets, dst: Path):
    from fusion_bench_larv.synth.cache import Assets

    shutil.copytree(assets.root, dst / assets.root.name, ignore=shutil.ignore_patterns("finetuned", "*.lock"))
    return Assets(dst, assets.seed)


def run(tasks: int, jobs: int, cache_dir, seed: int) -> dict:
    import torch

    from fusion_bench_larv.synth.build import _recorded_recipe, _torch_seed, ensure
    from fusion_bench_larv.synth.tasks import suite_tasks
    from fusion_bench_larv.synth.towers import finetune_towers

    names = list(suite_tasks(tasks))
    with tempfile.TemporaryDirectory() as tmp:
        assets = ensure(names, cache_dir=cache_dir or Path(tmp) / "build", seed=seed)
        recipe = _recorded_recipe(assets)
        times, roots = {}, {}
        torch.set_num_threads(1)
        for label, n in (("one by one", 1), (f"{jobs} processes", jobs)):
            copy = _copy_without_towers(assets, Path(tmp) / label.replace(" ", "_"))
            start = time.perf_counter()
            finetune_towers(copy, recipe, names, lambda t: _torch_seed(recipe, f"finetune/{t}"), lambda t, s: None, jobs=n)
            times[label] = time.perf_counter() - start
            roots[label] = copy
        def same(a, b):
            return all((a.finetuned(t) / "model.safetensors").read_bytes() == (b.finetuned(t) / "model.safetensors").read_bytes() for t in names)

        one, par = roots.values()
        return {"tasks": tasks, "jobs": jobs, "seconds": times, "load": os.getloadavg(),
                "same_as_each_other": same(one, par), "same_as_build": same(one, assets)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4, help="towers to fine-tune (the first N tasks of the suite)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of the parallel run (default 2)")
    parser.add_argument("--cache-dir", default=None, help="a cache root holding (or to hold) the build")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.jobs < 2:
        parser.error(f"--tasks must be >= 1 and --jobs >= 2, got {args.tasks} and {args.jobs}")
    out = run(args.tasks, args.jobs, args.cache_dir, args.seed)
    (one, one_s), (par, par_s) = out["seconds"].items()
    print(f"{args.tasks} tower(s): {one} {one_s:.1f} s, {par} {par_s:.1f} s, ratio {one_s / par_s:.2f}x "
          f"(load average before the end {out['load'][0]:.2f}, {os.cpu_count()} cores)")
    print("towers byte for byte the same in both runs: " + ("yes" if out["same_as_each_other"] else "NO")
          + "; as the build's own: " + ("yes" if out["same_as_build"] else "no (built elsewhere)"))
    return 0 if out["same_as_each_other"] else 1


if __name__ == "__main__":
    sys.exit(main())
