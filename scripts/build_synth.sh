#!/usr/bin/env bash
# Build the offline tinyclip_synth benchmark for N tasks (8 | 14 | 20) and measure its quality
# bar through the real `fusion_bench` CLI: zero-shot, each individual fine-tuned model on its own
# task, and task arithmetic (scaling_factor 0.3). Reproduces docs/benchmark.md.
#
# Usage: scripts/build_synth.sh [N=8] [OUT=outputs/synth_quality/synth<N>]
# Assets go to $FUSION_BENCH_LARV_CACHE (else $XDG_CACHE_HOME/fusion_bench_larv, else
# ~/.cache/fusion_bench_larv); a second run reuses them. Extra build flags (recipe overrides,
# e.g. BUILD_ARGS="--finetune-lr 3e-4") go in $BUILD_ARGS.
set -euo pipefail

N="${1:-8}"
OUT="${2:-outputs/synth_quality/synth${N}}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

python -m fusion_bench_larv.synth build --tasks "${N}" ${BUILD_ARGS:-}  # unquoted on purpose: several flags

run() { fusion_bench modelpool="tinyclip_synth${N}" print_config=false "$@" > /dev/null; }

run method=dummy path.log_dir="${OUT}/zeroshot"
for task in $(python -c "from fusion_bench_larv.synth.tasks import SUITES; print(' '.join(SUITES[${N}]))"); do
  run method=dummy modelpool.individual="${task}" "taskpool.tasks=[${task}]" path.log_dir="${OUT}/individual/${task}"
done
run method=task_arithmetic method.scaling_factor=0.3 path.log_dir="${OUT}/task_arithmetic"

python - "${OUT}" <<'EOF'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
load = lambda p: json.loads((out / p / "program_report.json").read_text())
zs, ta = load("zeroshot"), load("task_arithmetic")
tasks = [t for t in zs if t not in ("average", "model_info")]
ind = {t: load(f"individual/{t}")[t]["accuracy"] for t in tasks}
print(f"{'task':20s} {'zero-shot':>9s} {'individual':>10s} {'TA 0.3':>7s}")
for t in tasks:
    print(f"{t:20s} {100 * zs[t]['accuracy']:9.1f} {100 * ind[t]:10.1f} {100 * ta[t]['accuracy']:7.1f}")
z, i, a = 100 * zs["average"]["accuracy"], 100 * sum(ind.values()) / len(ind), 100 * ta["average"]["accuracy"]
print(f"{'average':20s} {z:9.1f} {i:10.1f} {a:7.1f}")
print(f"bar 1: individual - zero-shot = {i - z:.1f} points (needs >= 25): {'met' if i - z >= 25 else 'NOT met'}")
print(f"bar 2: individual - TA(0.3)   = {i - a:.1f} points (needs >= 10): {'met' if i - a >= 10 else 'NOT met'}")
EOF
