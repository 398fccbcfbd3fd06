"""What a job is called: its backbone, task count and kind from the model pool, its merger and
gate variant from the method, task names as FusionBench spells them, and the labels of the
robustness and generalization experiments. Pure functions over names, used by
:mod:`fusion_bench_larv.paper.collect` and the tables."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

from .experiments import BACKBONES, MERGERS

#: tasks seen while merging in FusionBench's generalization pools (the rest of TA8 is unseen)
GENERALIZATION_SEEN = {
    "exp1": {"sun397", "stanford-cars", "resisc45", "dtd", "svhn", "gtsrb"},
    "exp2": {"sun397", "stanford-cars", "gtsrb", "eurosat", "dtd", "mnist"},
}
#: tasks left out of the merge in the offline analogues (config/modelpool/tinyclip_synth8_generalization_exp*.yaml;
#: a test checks them against the configs): MNIST, EuroSAT → handwritten_digits, textures; SVHN, RESISC45 → digits, position
TINYCLIP_GENERALIZATION_UNSEEN = {
    "exp1": {"handwritten-digits", "textures"},
    "exp2": {"digits", "position"},
}


def generalization_seen(backbone: str, exp: str, task: str) -> bool:
    """Whether ``task`` was merged in generalization experiment ``exp`` (``exp1``/``exp2``)."""
    if backbone == "TinyCLIP":
        return norm_task(task) not in TINYCLIP_GENERALIZATION_UNSEEN[exp]
    return norm_task(task) in GENERALIZATION_SEEN[exp]


CORRUPTION_LABELS = OrderedDict(
    clean="Clean", motion_blur="Motion", impulse_noise="Impulse", gaussian_noise="Gaussian", pixelate="Pixelate",
    spatter="Spatter", contrast="Contrast", jpeg_compression="JPEG",
)


BACKBONE_ORDER = [label for _, label in BACKBONES.values()] + ["TinyCLIP"]


_BARE_TO_MERGER = {m.bare_method: m.key for m in MERGERS.values()}


_LARV_TO_MERGER = {m.larv_method: m.key for m in MERGERS.values()}


def norm_task(name: str) -> str:
    """Task names as FusionBench's TA8 dataset configs spell them (``stanford_cars`` → ``stanford-cars``)."""
    return str(name).replace("_", "-").lower()


def describe_modelpool(modelpool: str) -> Dict[str, Any]:
    """Backbone, task count and experiment kind of a model-pool option."""
    mp = modelpool or ""
    m = re.search(r"clip-vit-(base-patch32|base-patch16|large-patch14)_(TA8|TALL14|TALL20)$", mp)
    if m:
        backbone = {v[0]: v[1] for v in BACKBONES.values()}[f"clip-vit-{m.group(1)}"]
        return dict(kind="clip", backbone=backbone, num_tasks=int(re.sub(r"\D", "", m.group(2))), setting=m.group(2))
    m = re.search(r"tinyclip_synth\d+_(robustness|generalization_exp\d)$", mp)
    if m:
        if m.group(1) == "robustness":
            return dict(kind="robustness", backbone="TinyCLIP", num_tasks=4, setting="corrupted")
        return dict(kind="generalization", backbone="TinyCLIP", num_tasks=6, setting=m.group(1).split("_")[-1])
    m = re.search(r"tinyclip_synth(\d+)", mp)
    if m:
        return dict(kind="clip", backbone="TinyCLIP", num_tasks=int(m.group(1)), setting=f"synth{m.group(1)}")
    m = re.search(r"clip-vit-(base-patch32|base-patch16|large-patch14)_(robustness_corrupted|generalization_exp\d|individual)$", mp)
    if m:
        backbone = {v[0]: v[1] for v in BACKBONES.values()}[f"clip-vit-{m.group(1)}"]
        what = m.group(2)
        if what.startswith("robustness"):
            return dict(kind="robustness", backbone=backbone, num_tasks=4, setting="corrupted")
        if what.startswith("generalization"):
            return dict(kind="generalization", backbone=backbone, num_tasks=6, setting=what.split("_")[-1])
        return dict(kind="individual", backbone=backbone, num_tasks=1, setting="individual")
    if "flan-t5" in mp:
        return dict(kind="nlp", backbone=mp.split("/")[-1].split("_")[0], num_tasks=8, setting="glue_lora16")
    return dict(kind="other", backbone=mp, num_tasks=None, setting=None)


def describe_method(method: str) -> Tuple[str, bool]:
    """(merger key, is LARV) of a method option."""
    if method in _LARV_TO_MERGER:
        return _LARV_TO_MERGER[method], True
    if method in _BARE_TO_MERGER:
        return _BARE_TO_MERGER[method], False
    if method and method.startswith("larv_"):
        return method[len("larv_"):], True
    return method or "", False


def tier_text(tiers: Any) -> str:
    if tiers is None:
        return ""
    return "/".join(f"{float(t):g}" for t in tiers)


def gate_label(gate: Optional[str], tiers: Any, tier_assignment: Optional[str]) -> str:
    """Name of a gate variant as in :data:`fusion_bench_larv.paper.experiments.GATE_VARIANTS`."""
    if not gate:
        return ""
    if gate == "tiered":
        n = len(tiers) if tiers is not None else 0
        if tier_assignment == "depth":
            return "depth_tiers"
        return f"tiered{n}" if n else "tiered"
    return str(gate)
