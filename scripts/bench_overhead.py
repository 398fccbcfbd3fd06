#!/usr/bin/env python
"""Time LARV's overhead next to its base merger on CLIP ViT shapes (GitHub issue 6).

Builds a random CLIP vision tower at the real shape of ViT-B/32, B/16 or L/14 (transformers'
``CLIPVisionConfig``; no download) and T fine-tuned variants with realistic updates (per matrix a
rank-``--update-rank`` part plus small dense noise, magnitudes growing with depth), then, in one
process, times the bare FusionBench merger and the LARV-wrapped one on the same in-memory
``BaseModelPool``, ``--repeats`` times (interleaved), and prints medians:

* ``base_s``: the bare merger's ``run``;
* ``larv_s``: ``LARVAlgorithm.run`` around the same merger, with its sections ``diag_s``
  (diagnostics + schedule) and ``scale_s`` (in-place rescaling);
* ``added_s = larv_s - base_s`` and ``ratio = added_s / base_s`` (what a user pays);
  ``sections_ratio = (diag_s + scale_s) / base_s`` (LARV's own work only; the difference is the
  wrapper's θ0 snapshot and per-model checks and copies of in-memory models).

With ``--memory`` every configuration (bare, LARV) is also run once in its own subprocess, which
reports its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, so the peak
includes the model pool itself) and, on CUDA, ``torch.cuda.max_memory_allocated``.

Example (the CPU row of docs/performance.md)::

    python scripts/bench_overhead.py --backbone vit-b-32 --tasks 8 --merger iso_c tsvm \
        task_arithmetic --threads 2 --repeats 3 --memory
"""

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch

BACKBONES = {
    # name: (hidden, intermediate, layers, heads, patch, image)
    "vit-b-32": (768, 3072, 12, 12, 32, 224),
    "vit-b-16": (768, 3072, 12, 12, 16, 224),
    "vit-l-14": (1024, 4096, 24, 16, 14, 224),
}
MERGERS = ("iso_c", "tsvm", "task_arithmetic")

log = logging.getLogger("bench_overhead")


# ----------------------------------------------------------------------------- models
def build_pretrained(backbone: str, layers: int, seed: int) -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    hidden, inter, num_layers, heads, patch, image = BACKBONES[backbone]
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=inter,
                              num_hidden_layers=layers or num_layers, num_attention_heads=heads,
                              patch_size=patch, image_size=image)
    torch.manual_seed(seed)
    return CLIPVisionModel(config).eval()


@torch.no_grad()
def make_task_model(pretrained: torch.nn.Module, task: int, *, seed: int, update_rank: int,
                    noise: float) -> torch.nn.Module:
    """θ_t = θ0 + τ_t: per block matrix a rank-r part plus dense noise, ‖τ‖/‖W0‖ growing with
    depth (2% in the first block to 6% in the last); other parameters get 0.1% dense noise."""
    from fusion_bench_larv.blocks import find_blocks

    model = copy.deepcopy(pretrained)
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    layout = find_blocks(state.keys())
    depth = {}
    for block in layout.blocks:
        for key in block.keys:
            depth[key] = block.index / max(layout.num_blocks - 1, 1)
    g = torch.Generator().manual_seed(seed * 1000 + task)
    for key, w in state.items():
        if w.ndim == 2 and min(w.shape) > 1 and key in depth:
            m, n = w.shape
            low = torch.randn(m, update_rank, generator=g) @ torch.randn(update_rank, n, generator=g)
            tau = low / low.norm() + noise * torch.randn(m, n, generator=g) / math.sqrt(m * n)
            magnitude = (0.02 + 0.04 * depth[key]) * w.norm()
            w.add_(tau * (magnitude / tau.norm()))
        else:
            w.add_(1e-3 * w.abs().mean() * torch.randn(w.shape, generator=g))
    return model


def build_pool(args):
    from fusion_bench import BaseModelPool

    pretrained = build_pretrained(args.backbone, args.layers, args.seed)
    models = {"_pretrained_": pretrained}
    for t in range(args.tasks):
        models[f"task{t}"] = make_task_model(pretrained, t, seed=args.seed,
                                             update_rank=args.update_rank, noise=args.noise)
    dtype = getattr(torch, args.dtype)
    return BaseModelPool({name: model.to(dtype) for name, model in models.items()})


# ----------------------------------------------------------------------------- algorithms
def make_fabric(device: str):
    import lightning as L

    fabric = L.Fabric(accelerator="cuda" if device == "cuda" else "cpu", devices=1)
    fabric.launch()
    return fabric


def make_bare(merger: str, fabric):
    from fusion_bench.utils import instantiate
    from fusion_bench_larv.defaults import BASE_MERGERS

    algo = instantiate(BASE_MERGERS[merger], _recursive_=False)
    algo._fabric_instance = fabric
    return algo


def make_larv(merger: str, fabric, args):
    from fusion_bench_larv.algorithm import LARVAlgorithm
    from fusion_bench_larv.defaults import BASE_MERGERS

    algo = LARVAlgorithm(base_method=BASE_MERGERS[merger], diagnostics_precision=args.diagnostics_precision,
                         rank_cache=args.rank_cache != "off", cpu_linalg=args.cpu_linalg)
    algo._fabric_instance = fabric
    return algo


def clear_rank_cache() -> None:
    from fusion_bench_larv.rank_cache import process_rank_cache

    process_rank_cache().clear()


def run_quietly(algo, pool):
    """``algo.run(pool)`` with FusionBench's per-key prints swallowed."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return algo.run(pool)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def restore(model: torch.nn.Module, snapshot: Dict[str, torch.Tensor]) -> None:
    """Bare mergers write the merged weights into the pool's pretrained model: undo that."""
    from fusion_bench_larv.state_dicts import restore_

    restore_(model.state_dict(), snapshot)


def time_merger(merger: str, pool, fabric, args) -> Dict[str, float]:
    pretrained = pool._models["_pretrained_"]
    theta0 = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}
    if args.rank_cache == "warm":  # one untimed run fills the process-wide rank cache
        clear_rank_cache()
        run_quietly(make_larv(merger, fabric, args), pool)
    samples: Dict[str, List[float]] = {k: [] for k in ("base_s", "larv_s", "diag_s", "scale_s")}
    for _ in range(args.repeats):
        gc.collect()
        sync(args.device)
        start = time.perf_counter()
        run_quietly(make_bare(merger, fabric), pool)
        sync(args.device)
        samples["base_s"].append(time.perf_counter() - start)
        restore(pretrained, theta0)
        gc.collect()
        if args.rank_cache == "cold":
            clear_rank_cache()
        larv = make_larv(merger, fabric, args)
        sync(args.device)
        start = time.perf_counter()
        run_quietly(larv, pool)
        sync(args.device)
        samples["larv_s"].append(time.perf_counter() - start)
        durations = larv.profiler.recorded_durations
        samples["diag_s"].append(sum(durations.get("diagnostics", [0.0])))
        samples["scale_s"].append(sum(durations.get("scaling", [0.0])))
        restore(pretrained, theta0)
    result = {k: statistics.median(v) for k, v in samples.items()}
    result["added_s"] = result["larv_s"] - result["base_s"]
    result["ratio"] = result["added_s"] / result["base_s"]
    result["sections_ratio"] = (result["diag_s"] + result["scale_s"]) / result["base_s"]
    result["samples"] = samples
    return result


# ----------------------------------------------------------------------------- error
@torch.no_grad()
def approximate_error(merger: str, pool, fabric, args) -> Dict[str, float]:
    """``diagnostics_precision: approximate`` against ``exact`` on this pool: the relative error of r_eff
    of every pretrained matrix and every merged update, of the block values e and c, and
    whether the per-block scales λ change."""
    from fusion_bench_larv.blocks import diagnostic_keys, find_blocks
    from fusion_bench_larv.diagnostics import effective_rank

    pretrained = pool._models["_pretrained_"]
    theta0 = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}
    merged = {k: v.detach().clone()
              for k, v in run_quietly(make_bare(merger, fabric), pool).state_dict().items()}
    restore(pretrained, theta0)  # the bare merger returned the pool's own pretrained model
    layout = find_blocks(theta0.keys())
    errors = {"w0": [], "update": []}
    for block in layout.blocks:
        for key in diagnostic_keys(block, theta0):
            for kind, matrix in (("w0", theta0[key]), ("update", merged[key] - theta0[key])):
                exact = effective_rank(matrix).item()
                approx = effective_rank(matrix, dtype=torch.float32).item()
                errors[kind].append(abs(approx - exact) / exact)
    records = {}
    for method in ("exact", "approximate"):
        algo = make_larv(merger, fabric, argparse.Namespace(diagnostics_precision=method, rank_cache="off",
                                                            cpu_linalg=args.cpu_linalg))
        run_quietly(algo, pool)
        records[method] = algo.record["blocks"]
    rel = lambda key: max(abs(a[key] - b[key]) / abs(b[key])
                          for a, b in zip(records["approximate"], records["exact"]))
    return {
        "reff_w0_max_rel": max(errors["w0"]),
        "reff_update_max_rel": max(errors["update"]),
        "e_max_rel": rel("e"),
        "c_max_rel": rel("c"),
        "same_scales": [r["scale"] for r in records["approximate"]]
        == [r["scale"] for r in records["exact"]],
    }


# ----------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_child(args) -> None:
    """One run of one configuration in this (fresh) process; prints its peaks as JSON.

    The pool's models are built first (they are the same for both configurations); the peak
    counter is then reset, so ``peak_rss_gib`` is the peak during the merge, the built pool
    included, and ``merge_rss_gib`` what the merge added on top of the pool.
    """
    pool = build_pool(args)
    fabric = make_fabric(args.device)
    if args.child == "larv":
        make_larv(args.merger[0], fabric, args)  # imports, so both sides start alike
    gc.collect()
    pool_kib = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    algo = (make_bare if args.child == "bare" else lambda m, f: make_larv(m, f, args))(
        args.merger[0], fabric)
    run_quietly(algo, pool)
    peak_kib = (_proc_status_kib("VmHWM") if reset
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    out = {
        "peak_rss_gib": peak_kib / 2**20,
        "merge_rss_gib": (peak_kib - pool_kib) / 2**20,
        "peak_method": "VmHWM after clear_refs" if reset else "ru_maxrss (includes building)",
        "peak_cuda_gib": (torch.cuda.max_memory_allocated() / 2**30
                          if args.device == "cuda" else None),
    }
    print("CHILD " + json.dumps(out), flush=True)


def peak_memory(merger: str, kind: str, argv: List[str]) -> Dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--merger", merger, "--child", kind]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("CHILD ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory run {kind}/{merger} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("CHILD "):])


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="vit-b-32")
    p.add_argument("--layers", type=int, default=0, help="blocks (0: the backbone's own)")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--merger", nargs="+", choices=MERGERS, default=["iso_c"])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="weight dtype of the pool's models (FusionBench's CLIP checkpoints are "
                        "float32; half precision needs a merger that supports it, e.g. on GPU)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: keep)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--diagnostics-precision", choices=("exact", "approximate"), default="exact")
    p.add_argument("--cpu-linalg", choices=("numpy", "torch"), default="numpy",
                   help="LARV's cpu_linalg: which BLAS/LAPACK computes the diagnostics on CPU")
    p.add_argument("--rank-cache", choices=("cold", "warm", "off"), default="cold",
                   help="cold: the process-wide rank cache is cleared before every LARV run; "
                        "warm: filled once, untimed; off: no cache (and no hashing)")
    p.add_argument("--update-rank", type=int, default=16)
    p.add_argument("--noise", type=float, default=0.3,
                   help="dense-noise share of each update (Frobenius, before normalisation)")
    p.add_argument("--memory", action="store_true", help="also measure peaks in subprocesses")
    p.add_argument("--error", action="store_true",
                   help="also measure diagnostics_precision=approximate against exact on this pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--child", choices=("bare", "larv"), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if args.child:
        return peak_memory_child(args)

    child_argv = [
        "--backbone", args.backbone, "--layers", str(args.layers), "--tasks", str(args.tasks),
        "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
        "--diagnostics-precision", args.diagnostics_precision, "--rank-cache", args.rank_cache, "--cpu-linalg", args.cpu_linalg,
        "--update-rank", str(args.update_rank), "--noise", str(args.noise), "--seed", str(args.seed),
    ]
    build_start = time.perf_counter()
    pool = build_pool(args)
    fabric = make_fabric(args.device)
    params = sum(p.numel() for p in pool._models["_pretrained_"].parameters())
    print(f"# {args.backbone} ({params / 1e6:.1f}M parameters) x {args.tasks} tasks, device "
          f"{args.device}, torch threads {torch.get_num_threads()}, diagnostics_precision {args.diagnostics_precision}, "
          f"cpu_linalg {args.cpu_linalg}, "
          f"rank cache {args.rank_cache}; built in {time.perf_counter() - build_start:.1f} s",
          flush=True)
    results = []
    for merger in args.merger:
        row = {"backbone": args.backbone, "layers": args.layers or BACKBONES[args.backbone][2],
               "tasks": args.tasks, "merger": merger, "device": args.device,
               "threads": torch.get_num_threads(), "diagnostics_precision": args.diagnostics_precision,
               "cpu_linalg": args.cpu_linalg,
               "rank_cache": args.rank_cache, "repeats": args.repeats}
        if args.repeats > 0:
            row.update(time_merger(merger, pool, fabric, args))
        if args.error:
            row.update(approximate_error(merger, pool, fabric, args))
            print("ERROR " + " ".join(f"{k}={row[k]}" for k in ("backbone", "tasks", "merger"))
                  + " " + " ".join(f"{k}={row[k]:.3g}" for k in ("reff_w0_max_rel",
                                                                 "reff_update_max_rel",
                                                                 "e_max_rel", "c_max_rel"))
                  + f" same_scales={row['same_scales']}", flush=True)
            if args.repeats == 0:
                results.append(row)
                continue
        if args.memory:
            for kind in ("bare", "larv"):
                for key, value in peak_memory(merger, kind, child_argv).items():
                    row[key if key == "peak_method" else f"{kind}_{key}"] = value
            row["peak_ratio"] = row["larv_peak_rss_gib"] / row["bare_peak_rss_gib"]
        results.append(row)
        fields = ["base_s", "larv_s", "diag_s", "scale_s", "added_s", "ratio", "sections_ratio"]
        if args.memory:
            fields += ["bare_peak_rss_gib", "larv_peak_rss_gib", "peak_ratio", "bare_merge_rss_gib",
                       "larv_merge_rss_gib"]
            if args.device == "cuda":
                fields += ["bare_peak_cuda_gib", "larv_peak_cuda_gib"]
        print("RESULT " + " ".join(f"{k}={row[k]}" for k in ("backbone", "tasks", "merger",
                                                            "device", "threads", "diagnostics_precision",
                                                            "cpu_linalg", "rank_cache"))
              + " " + " ".join(f"{k}={row[k]:.4g}" for k in fields), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
