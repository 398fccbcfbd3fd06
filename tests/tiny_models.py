"""Tiny in-memory CLIP vision towers for fast algorithm tests (no disk, no training).

Task models are the pretrained tower plus a task-specific low-rank update on every 2-D weight
and small dense noise elsewhere; update magnitudes grow with depth so blocks differ.
"""

import copy
from typing import Dict

import torch
from fusion_bench import BaseModelPool
from transformers import CLIPVisionConfig, CLIPVisionModel

NUM_LAYERS = 6


def tiny_clip_vision(num_layers: int = NUM_LAYERS, seed: int = 0, intermediate_size: int = 64) -> CLIPVisionModel:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=intermediate_size, num_hidden_layers=num_layers,
        num_attention_heads=4, image_size=32, patch_size=8,
    )
    return CLIPVisionModel(config).eval()


@torch.no_grad()
def fine_tuned(pretrained: CLIPVisionModel, task: int, rank: int = 2) -> CLIPVisionModel:
    model = copy.deepcopy(pretrained)
    g = torch.Generator().manual_seed(1000 + task)
    for name, p in model.named_parameters():
        depth = 1.0
        if ".layers." in name:
            depth = 1.0 + int(name.split(".layers.")[1].split(".")[0])
        if p.ndim == 2 and min(p.shape) > 1:
            u = torch.randn(p.shape[0], rank, generator=g)
            v = torch.randn(rank, p.shape[1], generator=g)
            p.add_(0.01 * depth * (u @ v) / rank + 0.002 * torch.randn(p.shape, generator=g))
        else:
            p.add_(0.005 * torch.randn(p.shape, generator=g))
    return model


class TinyPool:
    """Builds fresh pools (deep copies): FusionBench mergers modify in-memory models."""

    def __init__(self, num_tasks: int = 3, num_layers: int = NUM_LAYERS, dtype: torch.dtype = torch.float32):
        self.pretrained = tiny_clip_vision(num_layers).to(dtype)
        self.tasks = {f"task{t}": fine_tuned(self.pretrained, t) for t in range(num_tasks)}

    def __call__(self, **replace) -> BaseModelPool:
        models = {"_pretrained_": self.pretrained, **self.tasks, **replace}
        return BaseModelPool({k: copy.deepcopy(v) for k, v in models.items()})

    def pretrained_state(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.pretrained.state_dict().items()}
