"""Check checkpoints on disk against the pretrained model before anything is loaded from them.

``transformers``' ``from_pretrained`` fills a tensor that a checkpoint lacks with random initial
values and only logs "newly initialized"; a wrong shape fails deep inside it with a message that
names neither the model nor the key. A merge of such a model succeeds and is wrong. This module
reads the tensors' names, dtypes and shapes from the checkpoint files themselves (the
safetensors header, or a memory-mapped ``.bin`` state dict; sharded checkpoints through their
``*.index.json``) and compares them with the pretrained model's floating-point state dict θ0:

* every tensor of θ0 must be in the checkpoint (or, for tied weights, one of its aliases), with
  θ0's shape;
* a floating-point checkpoint tensor that θ0 lacks is an error when it lies under one of θ0's
  top-level modules (e.g. an extra block ``vision_model.encoder.layers.12.``); tensors of other
  modules are ignored, as ``from_pretrained`` ignores them (a full CLIP checkpoint holds the
  text tower next to the vision tower a ``CLIPVisionModel`` loads).

Integer buffers (``position_ids``) are not compared: LARV merges floating-point tensors only.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["checkpoint_path", "read_checkpoint_shapes", "check_checkpoint"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PATH_KEYS = ("pretrained_model_name_or_path", "model_name_or_path", "path")
SAFETENSORS_FLOAT = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}

#: name -> (shape, is floating point)
Shapes = Dict[str, Tuple[Tuple[int, ...], bool]]


def _source(config: Any) -> Optional[str]:
    """The path or hub id a pool entry loads from (None: in memory, or not known)."""
    if isinstance(config, (str, os.PathLike)):
        return os.fspath(config)
    if isinstance(config, (Mapping, DictConfig)):
        for key in PATH_KEYS:
            value = config.get(key, None)
            if isinstance(value, (str, os.PathLike)):
                return os.fspath(value)
    return None


def checkpoint_path(config: Any) -> Optional[str]:
    """The weight file of a pool entry: a local checkpoint folder or file, or a hub id already in
    the local Hugging Face cache. ``None`` when the entry is in memory or its weights are not on
    this disk (yet)."""
    if isinstance(config, nn.Module):
        return None
    source = _source(config)
    if source is None:
        return None
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        for name in WEIGHT_FILES:
            if os.path.isfile(os.path.join(source, name)):
                return os.path.join(source, name)
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in WEIGHT_FILES:
            found = try_to_load_from_cache(source, name)
            if isinstance(found, str):
                return found
    except Exception as e:  # not a valid hub id, no cache: nothing to read before loading
        log.debug("no cached checkpoint for %r: %s", source, e)
    return None


def _safetensors_header(path: str) -> Shapes:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: (tuple(v["shape"]), v["dtype"] in SAFETENSORS_FLOAT)
            for k, v in header.items() if k != "__metadata__"}


def _torch_state_dict(path: str) -> Shapes:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) format: no mmap
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (tuple(v.shape), torch.is_floating_point(v)) for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def read_checkpoint_shapes(path: str) -> Shapes:
    """``{tensor name: (shape, is floating point)}`` of a checkpoint file, without loading it
    (``.safetensors``: the header; ``.bin``: a memory-mapped state dict; ``*.index.json``: every
    shard it names)."""
    if path.endswith(".index.json"):
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        shapes: Shapes = {}
        for shard in shards:
            shapes.update(read_checkpoint_shapes(os.path.join(os.path.dirname(path), shard)))
        return shapes
    if path.endswith(".safetensors"):
        return _safetensors_header(path)
    return _torch_state_dict(path)


def tied_groups(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, List[str]]:
    """``{key: keys sharing its storage}`` of a module's state dict (tied weights, which a
    checkpoint stores once)."""
    by_storage: Dict[tuple, List[str]] = {}
    for key, value in state_dict.items():
        by_storage.setdefault((value.untyped_storage().data_ptr(), value.storage_offset(),
                               tuple(value.shape)), []).append(key)
    return {key: group for group in by_storage.values() for key in group}


def _align(shapes: Shapes, reference: Iterable[str]) -> Shapes:
    """Rename checkpoint keys that carry one more (or one less) leading prefix than θ0's
    (e.g. ``vision_model.`` between transformers 4 and 5), as ``from_pretrained`` does."""
    reference = list(reference)
    if not reference or any(k in shapes for k in reference):
        return shapes
    first = reference[0]
    for key in shapes:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in shapes.items()}
        if first.endswith("." + key):
            prefix = first[: -len(key)]
            return {prefix + k: v for k, v in shapes.items()}
    return shapes


def check_checkpoint(
    name: str,
    path: str,
    reference: Mapping[str, torch.Tensor],
    tied: Optional[Mapping[str, Sequence[str]]] = None,
) -> None:
    """Raise ``ValueError`` naming the model, the key and both shapes if the checkpoint at
    ``path`` would not load into the pretrained model's tensors exactly (see the module
    docstring). ``reference`` is θ0 (floating-point state dict); ``tied`` its tied-weight
    groups (:func:`tied_groups`)."""
    try:
        shapes = _align(read_checkpoint_shapes(path), reference)
    except Exception as e:
        raise ValueError(f"model '{name}': cannot read the checkpoint {path}: {type(e).__name__}: {e}") from e
    tied = tied or {}
    for key, value in reference.items():
        found = [k for k in tied.get(key, [key]) if k in shapes]
        if not found:
            raise ValueError(
                f"model '{name}': the checkpoint {path} has no tensor '{key}' (the pretrained model "
                f"has it with shape {tuple(value.shape)}); loading it would fill it with random "
                "values"
            )
        shape = shapes[found[0]][0]
        if shape != tuple(value.shape):
            raise ValueError(
                f"model '{name}': tensor '{key}' has shape {shape} in the checkpoint {path}, the "
                f"pretrained model has {tuple(value.shape)}"
            )
    modules = {k.split(".", 1)[0] for k in reference}
    extra = [k for k, (_, is_float) in shapes.items()
             if is_float and k not in reference and k.split(".", 1)[0] in modules]
    if extra:
        raise ValueError(
            f"model '{name}': the checkpoint {path} has tensor '{extra[0]}' with shape "
            f"{shapes[extra[0]][0]}, which the pretrained model does not have (shape: none)"
            + (f"; {len(extra) - 1} more" if len(extra) > 1 else "")
        )
