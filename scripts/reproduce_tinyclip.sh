#!/usr/bin/env bash
# Reproduce docs/results.md and docs/results/: every LARV-paper experiment that runs on the
# embedded offline benchmark (tinyclip_synth, 8/14/20 tasks), then its tables and figures.
#
# Usage: scripts/reproduce_tinyclip.sh [OUT=outputs/larv-tiny] [reproduce-larv options...]
#   e.g. scripts/reproduce_tinyclip.sh outputs/larv-tiny --launcher joblib --n-jobs 2
# Builds the 20-task assets first if they are missing (cache: see docs/benchmark.md). Finished
# jobs are skipped, so an interrupted run resumes where it stopped. Tables and figures go to
# OUT/tables (results.csv, summary.csv, depth.csv, larv_blocks.csv, tables.md, tables.tex,
# fig_*.png/pdf, layerwise/).
set -euo pipefail

OUT="${1:-outputs/larv-tiny}"
shift || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

python -m fusion_bench_larv.synth build --tasks 20

common=(--suite tinyclip --output "${OUT}" "$@")
reproduce-larv zeroshot "${common[@]}"                      # pretrained model, 8/14/20 tasks
reproduce-larv individual --tasks 20 "${common[@]}"         # each fine-tuned tower on its task
reproduce-larv main --tasks 8 14 20 "${common[@]}"          # 6 mergers x {bare, +LARV}
# gate ablation; tiered3 (the shipped defaults) is the main table's +LARV job, not rerun
reproduce-larv gates --tasks 8 14 20 --gates tiered2 continuous linear_depth depth_tiers "${common[@]}"
reproduce-larv tiers "${common[@]}"                         # Figure 4: middle x deep tiers, Iso-C, 8 tasks
reproduce-larv diagnostics "${common[@]}"                   # Figure 2: e, c, s per block, 5 mergers
# Figures 3 and 5: 4 towers merged, evaluated on the clean and the 7 corrupted test splits; with
# the pretrained model and each tower alone on every split (zero-shot and individual rows)
reproduce-larv robustness --references "${common[@]}"
reproduce-larv generalization "${common[@]}"                # 6 of the 8 towers merged, all 8 evaluated
# Appendix D: LARV vs depth priors (LiNeS, a linear ramp, depth tiers, rho=0) at 8/14/20 tasks;
# global scales, LiNeS's beta and a tier grid chosen on the validation splits, then run on test
reproduce-larv depth "${common[@]}"

make-larv-tables "${OUT}" --out "${OUT}/tables"

# Issue #23's layer-wise facts of the build itself (in-process, no LARV job): seed 0 at 8/14/20
for n in 8 14 20; do
    python -m fusion_bench_larv.synth layerwise --tasks "${n}" --out "${OUT}/tables/layerwise"
done
