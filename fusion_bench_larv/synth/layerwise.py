"""Do the tiny CLIP's blocks behave like real CLIP's? (``python -m fusion_bench_larv.synth layerwise``)

Measures, on a built suite (issue #23; docs/benchmark.md, "Layer-wise behaviour"), the four
layer-wise facts that LiNeS (Wang et al., "LiNeS: Post-training layer scaling prevents
forgetting and enhances model merging", ICLR 2025) reports for real CLIP, in-process, with the
zero-shot heads the task pool uses (``model.zeroshot_head``, FusionBench's ``HFCLIPClassifier``
rule) and ``model.correct``:

1. **Single-task retention.** Each fine-tuned tower's update τ_t = θ_t − θ0 scaled per block by
   the LiNeS ramp λ_ℓ = 0.1 + 0.9 ℓ/(L−1) (parameters outside the blocks: 0.1); the mean test
   accuracy of the ramped towers on their own tasks over that of the fine-tuned towers
   (real CLIP ViT-B/32, 8 tasks: 90.5 → 90.3, 0.998). Reported beside it, the depth controls:
   the blocks scaled by the reversed ramp (λ_ℓ = 1 − 0.9 ℓ/(L−1)), by the ramp's mean 0.55, or
   one half kept whole and the other removed (outside the blocks 0.1 in each), and the ramp with
   all parameters outside the blocks, or only the patch embedding, kept whole; ``depth_gain`` =
   ramped − reversed (points). Where a task lives in the deep blocks the ramp keeps more than the
   reversed ramp and the uniform scale; where accuracy follows the update's size, all three agree.
2. **Forgetting and its recovery.** For each task t, the mean test accuracy on the other tasks
   of the zero-shot model, of θ_t and of the ramped θ_t; ``loss`` = zero-shot − fine-tuned,
   ``recovered`` = (ramped − fine-tuned) / loss, both averaged over t first (real CLIP: 48.3 →
   38.0, a 10-point loss, most of it given back by the ramp).
3. **LiNeS against task arithmetic.** Task arithmetic θ0 + λ Σ τ_t with λ ∈ {0.1, …, 1.0};
   LiNeS: the update Σ τ_t (task arithmetic at scale 1) scaled by α + β ℓ/(L−1), α = LiNeS's
   ``||Σ τ_t||_1 / (T ||Σ τ_t||_1)`` = 1/T (``gates.lines_alpha``), β ∈ {0.1, …, 1.0}, outside
   the blocks α. λ and β are chosen on the validation splits (mean accuracy, ties to the
   smaller value); the margin is LiNeS's test accuracy minus task arithmetic's, with its standard
   error over the paired test images (``layerwise_facts.paired_margin_se``).
4. **Figure-2 trends.** LARV's per-block diagnostics e_ℓ (effective-rank contrast) and c_ℓ
   (commutator coefficient) of the merged update of each of the paper's six mergers at
   FusionBench's CLIP settings (``defaults.BASE_MERGERS``), computed by the package's own
   path (``LARVAlgorithm`` with ``gate: identity``, ``source: merged``: the values of
   docs/results/larv_blocks.csv), and their Spearman correlation with depth
   (``gates.depth_rank_correlation``). The bare mergers' test accuracies come with them.
   Beside them, what sets task arithmetic's e (``rank_profile``): per block, the effective ranks
   of W0, of each task's update τ_t and of their sum, and each task's own contrast
   r_eff(W0) / r_eff(τ_t) (LARV's ``source: task_vectors``) with its depth Spearman, and task
   arithmetic's e split by matrix kind (q/k/v/out, fc1/fc2).

The ramp and the rescaling are the package's (``gates.linear_depth_scales``, ``blocks.scale_map``,
``state_dicts.rescale_update_``). Thresholds, judging and the report files: :mod:`.layerwise_facts`. Nothing here
reads or computes a LARV-gated model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..blocks import BlockLayout, find_blocks, scale_map
from ..gates import depth_rank_correlation, linear_depth_scales, lines_alpha
from ..linalg import torch_threads
from ..state_dicts import float_state_dict, rescale_update_, snapshot, task_sum_l1
from .build import ensure
from .datasets import load_split
from .layerwise_facts import (CONTROL_LABELS, GRID, MERGERS, SINGLE_ALPHA, SINGLE_BETA, THRESHOLDS, _mean, _pick,
                              judge, paired_margin_se)
from .layerwise_ranks import rank_profile
from .tasks import SUITE_ORDER, SUITES

PATCH_EMBEDDING = "embeddings.patch_embedding.weight"  # the one patch-embedding key of a CLIP vision tower

log = logging.getLogger(__name__)

__all__ = ["parse_tasks", "check_seed", "check_threads", "measure"]



# ----------------------------------------------------------------------------- input checks
def parse_tasks(value: Union[str, int, Sequence[str]]) -> List[str]:
    """``8`` / ``14`` / ``20`` (a suite), or task names (a list or ``"a,b,c"``); at least two,
    no duplicates. Raises ``ValueError`` naming ``tasks`` and the bad value."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        n = int(value)
        if n not in SUITES:
            raise ValueError(f"tasks: {value!r} is not a suite size; use one of {sorted(SUITES)} or task names")
        return list(SUITES[n])
    names = [t.strip() for t in value.split(",")] if isinstance(value, str) else [str(t) for t in value]
    unknown = [t for t in names if t not in SUITE_ORDER]
    if unknown or not names:
        raise ValueError(f"tasks: unknown task name(s) {unknown or names!r} in {value!r}; "
                         f"known: {', '.join(SUITE_ORDER)}")
    duplicates = sorted({t for t in names if names.count(t) > 1})
    if duplicates:
        raise ValueError(f"tasks: {duplicates!r} named twice in {value!r}")
    if len(names) < 2:
        raise ValueError(f"tasks: {value!r} names one task; forgetting and merging need at least two")
    return names


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    return seed


def check_threads(threads) -> Optional[int]:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: must be an integer >= 1, got {threads!r}")
    return threads


# ----------------------------------------------------------------------------- models
@dataclass
class _Suite:
    """What every measurement reads: the CLIP (projection), heads, test and val data, state dicts."""

    tasks: List[str]
    clip: "torch.nn.Module"
    vision: "torch.nn.Module"
    heads: Dict[str, torch.Tensor]
    data: Dict[str, Dict[str, tuple]]
    theta0: Dict[str, torch.Tensor]
    finetuned: Dict[str, Dict[str, torch.Tensor]]
    layout: BlockLayout


def _load(assets, tasks: Sequence[str]) -> _Suite:
    from transformers import CLIPModel, CLIPProcessor, CLIPVisionModel

    from . import model as M

    clip = CLIPModel.from_pretrained(str(assets.pretrained)).eval()
    processor = CLIPProcessor.from_pretrained(str(assets.pretrained), use_fast=False)
    table = json.loads(assets.prompts.read_text())
    heads = {t: M.zeroshot_head(clip, processor, table[t]["classnames"], table[t]["templates"]) for t in tasks}
    data = {t: {split: load_split(assets, t, split) for split in ("val", "test")} for t in tasks}
    vision = CLIPVisionModel.from_pretrained(str(assets.pretrained)).eval()
    theta0 = snapshot(float_state_dict(vision))
    finetuned = {t: snapshot(float_state_dict(CLIPVisionModel.from_pretrained(str(assets.finetuned(t))))) for t in tasks}
    layout = find_blocks(theta0.keys())
    return _Suite(list(tasks), clip, vision, heads, data, theta0, finetuned, layout)


def _ramp(layout: BlockLayout, alpha: float, beta: float, outside: Optional[float] = None) -> Dict[str, float]:
    """``{key: λ}`` of the ramp α + β ℓ/(L−1), α outside the blocks (LiNeS's rule) unless
    ``outside`` is given."""
    scales = linear_depth_scales(layout.num_blocks, alpha=alpha, beta=beta)
    return scale_map(layout, scales, non_block_scale=alpha if outside is None else outside)


def _controls(layout: BlockLayout) -> Dict[str, Dict[str, float]]:
    """``{name: {key: λ}}`` of the depth controls: the update's blocks scaled in another depth
    order (reversed ramp), without order (uniform, the ramp's mean), or one half kept whole and
    the other removed, outside the blocks ``SINGLE_ALPHA`` as in the ramp; and the ramp itself
    with the parameters outside the blocks (embeddings, pre- and post-norm) kept whole, or only
    the patch embedding kept whole, which show how much of fact 1's loss sits outside the blocks
    and how much of that in the patch embedding."""
    L = layout.num_blocks
    rows = {
        "reversed": [float(x) for x in linear_depth_scales(L, alpha=SINGLE_ALPHA + SINGLE_BETA, beta=-SINGLE_BETA)],
        "uniform": [SINGLE_ALPHA + SINGLE_BETA / 2] * L,
        "deep_half": [0.0 if i < L // 2 else 1.0 for i in range(L)],
        "shallow_half": [1.0 if i < L // 2 else 0.0 for i in range(L)],
    }
    controls = {name: scale_map(layout, scales, non_block_scale=SINGLE_ALPHA) for name, scales in rows.items()}
    controls["outside_whole"] = _ramp(layout, SINGLE_ALPHA, SINGLE_BETA, outside=1.0)
    ramp = _ramp(layout, SINGLE_ALPHA, SINGLE_BETA)
    patch = [k for k in layout.non_block_keys if k.endswith(PATCH_EMBEDDING)]
    if len(patch) != 1:
        raise ValueError(f"expected one key ending in {PATCH_EMBEDDING!r} outside the blocks, got {patch}")
    controls["patch_whole"] = {**ramp, patch[0]: 1.0}
    return controls


def _rescaled(theta0, state, scales: Mapping[str, float]) -> Dict[str, torch.Tensor]:
    """θ0 + λ ⊙ (state − θ0), a new state dict (``state`` is left as it is)."""
    out = snapshot(state)
    rescale_update_(out, theta0, scales)
    return out


class _Evaluator:
    """Accuracies (%) of vision-tower state dicts on the suite's tasks, with a progress bar."""

    def __init__(self, suite: _Suite, total: int, progress: bool):
        from tqdm.auto import tqdm

        self.suite = suite
        self.bar = tqdm(total=total, desc="layerwise: evaluations", unit="eval", disable=not progress,
                        dynamic_ncols=True)

    def __call__(self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test") -> Dict[str, float]:
        return _percent(self.hits(state, tasks, split))

    @torch.no_grad()
    def hits(self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test"):
        """``{task: bool per image}``: which images of ``split`` the tower gets right."""
        from . import model as M

        s = self.suite
        missing, unexpected = s.vision.load_state_dict(dict(state), strict=False)
        if unexpected or any(s.theta0.get(k) is not None for k in missing):
            raise ValueError(f"state dict does not fit the vision tower: missing {missing}, unexpected {unexpected}")
        out = {}
        for task in tasks:
            out[task] = M.correct(s.clip, s.vision, s.heads[task], *s.data[task][split])
            self.bar.update(1)
        return out


def _percent(hits: Mapping) -> Dict[str, float]:
    """``{task: accuracy (%)}`` of ``{task: bool per image}``."""
    return {task: 100.0 * float(h.mean()) for task, h in hits.items()}


# ----------------------------------------------------------------------------- facts
def _single_task(suite: _Suite, evaluate: _Evaluator) -> dict:
    """Facts 1 and 2: zero-shot, fine-tuned and ramped towers on every task (test split)."""
    tasks = suite.tasks
    scales = _ramp(suite.layout, SINGLE_ALPHA, SINGLE_BETA)
    zero_shot = evaluate(suite.theta0, tasks)
    finetuned, ramped = {}, {}
    for t in tasks:
        finetuned[t] = evaluate(suite.finetuned[t], tasks)
        ramped[t] = evaluate(_rescaled(suite.theta0, suite.finetuned[t], scales), tasks)
    target_ft = _mean(finetuned[t][t] for t in tasks)
    target_ramp = _mean(ramped[t][t] for t in tasks)
    others = lambda acc, t: _mean(acc[s] for s in tasks if s != t)
    zs_other = _mean(others(zero_shot, t) for t in tasks)
    ft_other = _mean(others(finetuned[t], t) for t in tasks)
    ramp_other = _mean(others(ramped[t], t) for t in tasks)
    loss = zs_other - ft_other
    controls = {}
    for name, control in _controls(suite.layout).items():
        own = {t: evaluate(_rescaled(suite.theta0, suite.finetuned[t], control), [t])[t] for t in tasks}
        controls[name] = {"own": own, "mean": _mean(own.values())}
    return {
        "zero_shot": zero_shot,
        "finetuned": finetuned,
        "ramped": ramped,
        "depth_controls": controls,
        "depth_gain": target_ramp - controls["reversed"]["mean"],
        "target": {"finetuned": target_ft, "ramped": target_ramp, "retention": target_ramp / target_ft},
        "others": {
            "zero_shot": zs_other,
            "finetuned": ft_other,
            "ramped": ramp_other,
            "loss": loss,
            "recovered": (ramp_other - ft_other) / loss if loss > 0 else None,
        },
    }


def _fact3_arms(suite: _Suite):
    """Fact 3's two arms: the task sum θ0 + Σ τ_t, LiNeS's α, and ``{arm: {grid value: {key: λ}}}``
    (task arithmetic: λ everywhere; LiNeS: the ramp α + β ℓ/(L−1))."""
    theta0 = suite.theta0
    task_sum = {k: theta0[k] + sum(suite.finetuned[t][k] - theta0[k] for t in suite.tasks) for k in theta0}
    alpha = lines_alpha(task_sum_l1(suite.finetuned.values(), theta0), task_sum_l1([task_sum], theta0), len(suite.tasks))
    return task_sum, alpha, {"task_arithmetic": {v: {k: v for k in theta0} for v in GRID},
                             "lines": {v: _ramp(suite.layout, alpha, v) for v in GRID}}


def _lines_vs_ta(suite: _Suite, evaluate: _Evaluator) -> dict:
    """Fact 3: task arithmetic (λ on val) against LiNeS (β on val), both reported on test."""
    tasks, theta0 = suite.tasks, suite.theta0
    task_sum, alpha, candidates = _fact3_arms(suite)
    out, hits = {"alpha": alpha}, {}
    for name, grid in candidates.items():
        val = {v: evaluate(_rescaled(theta0, task_sum, scales), tasks, "val") for v, scales in grid.items()}
        curve = {v: _mean(acc.values()) for v, acc in val.items()}
        chosen = _pick(curve)
        hits[name] = evaluate.hits(_rescaled(theta0, task_sum, grid[chosen]), tasks, "test")
        test = _percent(hits[name])
        out[name] = {"chosen": chosen, "val_curve": curve, "val": curve[chosen], "test": test,
                     "test_mean": _mean(test.values())}
    out["margin"] = out["lines"]["test_mean"] - out["task_arithmetic"]["test_mean"]
    out["margin_se"] = paired_margin_se(hits["lines"], hits["task_arithmetic"])
    return out


@contextlib.contextmanager
def _merger_output_to_debug(merger: str):
    """Keep the mergers' chatter off the terminal while ``merger`` runs: FusionBench's bare
    ``print`` calls (Iso-C's "Combining by avg <key>..." per parameter, profiler tables, rich
    panels) go to this module's DEBUG log; FusionBench's records below ERROR (the model pool's
    in-place and fabric-settings warnings, which this fixed set-up always triggers) and the
    wrapper's per-block INFO line are held back."""
    quieted = {"fusion_bench": logging.ERROR, "fusion_bench_larv.algorithm": logging.WARNING}
    levels = {name: logging.getLogger(name).level for name in quieted}
    for name, level in quieted.items():
        logging.getLogger(name).setLevel(max(levels[name], level))
    # a real file, not io.StringIO: FusionBench's rich setup asks sys.stdout for its fileno()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as buffer:
        try:
            with contextlib.redirect_stdout(buffer):
                yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            buffer.seek(0)
            printed = buffer.read().rstrip()
            if printed:
                log.debug("%s printed:\n%s", merger, printed)


def _trends(suite: _Suite, evaluate: _Evaluator) -> dict:
    """Fact 4: e and c per block of each merger's merged update, their depth Spearman, and the
    bare merger's test accuracy."""
    from fusion_bench import BaseModelPool
    from transformers import CLIPVisionModel

    from ..algorithm import LARVAlgorithm
    from ..defaults import BASE_MERGERS

    config = suite.vision.config

    def tower(state):
        model = CLIPVisionModel(config)
        model.load_state_dict(state, strict=False)
        return model.eval()

    out = {}
    for merger in MERGERS:
        pool = BaseModelPool({"_pretrained_": tower(suite.theta0), **{t: tower(suite.finetuned[t]) for t in suite.tasks}})
        torch.manual_seed(0)
        algo = LARVAlgorithm(base_method=BASE_MERGERS[merger], gate="identity", apply="post")
        with _merger_output_to_debug(merger):
            merged = algo.run(pool)
        rows = algo.record["blocks"]
        e = torch.tensor([math.nan if r["e"] is None else r["e"] for r in rows], dtype=torch.float64)
        c = torch.tensor([math.nan if r["c"] is None else r["c"] for r in rows], dtype=torch.float64)
        valid = ~torch.tensor([r["zero_update"] for r in rows])
        test = evaluate(snapshot(float_state_dict(merged)), suite.tasks, "test")
        out[merger] = {
            "e": e.tolist(),
            "c": c.tolist(),
            "e_rho": depth_rank_correlation(e, valid),
            "c_rho": depth_rank_correlation(c, valid),
            "test": test,
            "test_mean": _mean(test.values()),
        }
    return out


# ----------------------------------------------------------------------------- entry points
def measure(
    tasks: Union[str, int, Sequence[str]] = 8,
    cache_dir: Union[str, Path, None] = None,
    seed: int = 0,
    threads: Optional[int] = 1,
    progress: bool = True,
) -> dict:
    """Facts 1-4 on the built suite ``tasks`` (``ensure(..., build_if_missing=False)``: a missing
    artefact raises, naming the build command). Returns a JSON-ready dict."""
    tasks = parse_tasks(tasks)
    seed = check_seed(seed)
    threads = check_threads(threads)
    assets = ensure(tasks, cache_dir=cache_dir, seed=seed, build_if_missing=False)
    start = time.perf_counter()
    with torch_threads(threads):
        suite = _load(assets, tasks)
        n = len(tasks)
        total = n + 2 * n * n + len(CONTROL_LABELS) * n + 2 * (len(GRID) * n + n) + len(MERGERS) * n
        evaluate = _Evaluator(suite, total, progress)
        try:
            single = _single_task(suite, evaluate)
            merge = _lines_vs_ta(suite, evaluate)
            trends = _trends(suite, evaluate)
        finally:
            evaluate.bar.close()
        ranks = rank_profile(suite.theta0, suite.finetuned, suite.layout)  # no evaluation: after the bar
    manifest = assets.read_manifest()
    facts = judge(len(tasks), single, merge, trends)
    return {
        "tasks": tasks,
        "num_tasks": len(tasks),
        "seed": seed,
        "assets": assets.root.name,  # the folder, not the machine's cache path
        "recipe": manifest["recipe"],
        "shipped": manifest.get("shipped", []),
        "num_blocks": suite.layout.num_blocks,
        "thresholds": {k: list(v) if isinstance(v, tuple) else v for k, v in THRESHOLDS.items()},
        "facts": facts,
        "all_judged_pass": all(f["passed"] for f in facts if f["passed"] is not None),
        "single_task": single,
        "lines_vs_task_arithmetic": merge,
        "trends": trends,
        "rank_profile": ranks,
        "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads() if threads is None else threads,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()},
    }
