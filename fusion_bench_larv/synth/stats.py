"""Task-vector statistics of a ``tinyclip_synth`` build (``python -m fusion_bench_larv.synth stats``).

For the vision tower's 2-D weights (the matrices every SVD-based merger works on):

- ``rel_norm``: ‖τ_t‖ / ‖θ0‖ per task, with τ_t = θ_t − θ0 over all 2-D weights;
- ``mean_cos``: the mean pairwise cosine of the flattened task vectors;
- ``depth``: per block ℓ, ‖τ_t‖ / ‖θ0‖ over that block's 2-D weights, averaged over tasks.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from ..blocks import find_blocks



def task_vector_stats(pretrained: Dict[str, torch.Tensor], finetuned: Dict[str, Dict[str, torch.Tensor]]) -> dict:
    """The statistics above from state dicts (``finetuned``: task → state dict)."""
    keys = [k for k, v in pretrained.items() if v.ndim == 2 and v.is_floating_point()]
    theta0 = torch.cat([pretrained[k].double().flatten() for k in keys])
    tasks = list(finetuned)
    vectors = torch.stack([torch.cat([(finetuned[t][k].double() - pretrained[k].double()).flatten() for k in keys]) for t in tasks])
    rel = {t: float(vectors[i].norm() / theta0.norm()) for i, t in enumerate(tasks)}
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-30)
    cos = unit @ unit.T
    n = len(tasks)
    mean_cos = float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))) if n > 1 else float("nan")
    depth = []
    for block in find_blocks(pretrained.keys()).blocks:  # the same block layout LARV uses
        matrices = [k for k in block.keys if k in keys]
        norm0 = torch.cat([pretrained[k].double().flatten() for k in matrices]).norm()
        per_task = [
            float(torch.cat([(finetuned[t][k].double() - pretrained[k].double()).flatten() for k in matrices]).norm() / norm0)
            for t in tasks
        ]
        depth.append(sum(per_task) / len(per_task))
    return {"rel_norm": rel, "mean_cos": mean_cos, "depth": depth}


def assets_stats(assets, tasks: Sequence[str]) -> dict:
    """``task_vector_stats`` of the built towers of ``tasks`` (a ``build.Assets``)."""
    from transformers import CLIPModel, CLIPVisionModel

    clip = CLIPModel.from_pretrained(str(assets.pretrained))
    pretrained = {f"vision_model.{k}": v for k, v in clip.vision_model.state_dict().items()}
    finetuned = {t: CLIPVisionModel.from_pretrained(str(assets.finetuned(t))).state_dict() for t in tasks}
    return task_vector_stats(pretrained, finetuned)


def format_stats(stats: dict) -> str:
    """A Markdown rendering (what ``python -m fusion_bench_larv.synth stats`` prints)."""
    lines = ["| task | ‖τ_t‖ / ‖θ0‖ |", "|---|---|"]
    lines += [f"| {t} | {v:.4f} |" for t, v in stats["rel_norm"].items()]
    lines += ["", f"mean pairwise cosine of the task vectors: {stats['mean_cos']:.4f}", ""]
    lines += ["| block | " + " | ".join(str(i) for i in range(len(stats["depth"]))) + " |"]
    lines += ["|---|" + "---|" * len(stats["depth"])]
    lines += ["| ‖τ‖ / ‖θ0‖ (mean over tasks) | " + " | ".join(f"{v:.4f}" for v in stats["depth"]) + " |"]
    return "\n".join(lines)
