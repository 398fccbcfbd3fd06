"""The model pool as LARV's base merger sees it: every model checked as it is handed out.

``LARVAlgorithm`` never gives the base merger its caller's pool directly. :func:`watched_pool`
wraps ``load_model`` so that each model is compared with the pretrained weights (same keys and
shapes, finite values) and, for ``apply: pre``, rescaled block by block before the merger uses
it. A failing model raises :class:`PoolModelError`, which LARV never wraps as a base-merger
failure. :func:`check_half_precision` fails early, with the fix, where an SVD merger would fail
on float16/bfloat16 weights on CPU.
"""

import copy
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from fusion_bench import BaseModelPool
from torch import nn

from .checkpoints import check_checkpoint, checkpoint_path, tied_groups
from .defaults import merger_of
from .state_dicts import check_compatible, check_finite, float_state_dict, rescale_update_, restore_, snapshot

__all__ = ["PRETRAINED", "PoolModelError", "aliases_any", "watched_pool", "svd_merger", "check_half_precision",
           "checked_pool", "check_checkpoints", "load_theta0"]

PRETRAINED = "_pretrained_"

HALF_DTYPES = (torch.float16, torch.bfloat16)


class PoolModelError(ValueError):
    """A model handed out by the pool failed LARV's checks (raised as is, never wrapped as a
    base-merger failure)."""


def aliases_any(model: nn.Module, others: Sequence[nn.Module]) -> bool:
    """Whether any tensor of ``model`` shares storage with a tensor of one of ``others``."""
    if not others:
        return False
    storages = {t.untyped_storage().data_ptr() for m in others for t in m.state_dict().values()}
    return any(t.untyped_storage().data_ptr() in storages for t in model.state_dict().values())


def svd_merger(base_method) -> Optional[str]:
    """The base merger's class path if the merger table marks it as SVD-based (else None)."""
    merger = merger_of(base_method)
    return merger.target if merger is not None and merger.svd else None


def check_half_precision(base_method, name: str, state: Mapping[str, torch.Tensor], device) -> None:
    """Fail first, with the fix, where an SVD merger would fail on float16/bfloat16 on CPU."""
    if device is not None and torch.device(device).type != "cpu":
        return
    half = sorted({str(v.dtype) for v in state.values() if v.dtype in HALF_DTYPES})
    if not half:
        return
    merger = svd_merger(base_method)
    if merger is not None:
        raise PoolModelError(
            f"model '{name}' is in {', '.join(half)}: the base merger {merger} calls torch.linalg.svd, "
            "which has no half-precision kernel on CPU. Load the models in float32: in Python "
            "`model.float()` before building the pool; in a FusionBench model pool config, "
            "`torch_dtype: float32` in the model's entry (or drop `torch_dtype: float16`); or "
            "run on a GPU"
        )


def watched_pool(
    modelpool: BaseModelPool,
    theta0: Mapping[str, torch.Tensor],
    scales: Optional[Mapping[str, float]] = None,
    copy_in_memory: bool = True,
    handed_out: Optional[Dict[str, nn.Module]] = None,
    check_model=None,
) -> BaseModelPool:
    """A shallow copy of ``modelpool`` whose ``load_model`` checks every model it hands out.

    Each model is checked against θ0 (same keys and shapes, finite values) as the base
    merger loads it, so no model is loaded twice. With ``scales`` (the ``pre`` veneer) each
    fine-tuned model is rescaled, θ0 + λ ⊙ τ_t, before the merger sees it.

    Modules held in memory by the pool (pools loaded from disk are never copied):

    * ``copy_in_memory=True``: each is deep-copied first and the pretrained model is always
      handed out as θ0. Needed whenever LARV rescales fine-tuned models (``pre``), runs the
      merger twice, or reads the fine-tuned models again after the merger ran (``source:
      task_vectors``, ``conflict: pairwise``): some mergers modify their inputs in place
      (FusionBench's simple average overwrites its first model, task arithmetic its
      pretrained one).
    * ``copy_in_memory=False`` (the default ``post`` + ``merged`` path, which reads only θ0,
      already snapshotted, and the merged model): handed out as they are, exactly as the
      bare merger sees them, and recorded in ``handed_out`` (name → module) so that the
      caller can copy a merged model that aliases one of them before rescaling it, and
      restore θ0 into the pretrained one afterwards.

    ``check_model(name, state)``, if given, runs first on every model handed out (LARV's
    half-precision and late checkpoint checks).
    """
    watched = copy.copy(modelpool)
    load_from_source = modelpool.load_model

    def load_model(model_name_or_config, *args, **kwargs):
        model = load_from_source(model_name_or_config, *args, **kwargs)
        name = model_name_or_config if isinstance(model_name_or_config, str) else "<config>"
        in_memory = isinstance(model_name_or_config, str) and isinstance(
            modelpool._models[model_name_or_config], nn.Module
        )
        if in_memory and copy_in_memory:
            model = copy.deepcopy(model)
        elif in_memory and handed_out is not None:
            handed_out[name] = model
        state = float_state_dict(model)
        try:
            if check_model is not None:
                check_model(name, state)
            check_compatible(name, state, theta0)
            if name != PRETRAINED:
                check_finite(name, state)
        except ValueError as e:
            raise PoolModelError(str(e)) from None
        if name == PRETRAINED:
            if in_memory and copy_in_memory:
                restore_(state, theta0)
            return model
        if scales is not None:
            rescale_update_(state, theta0, scales)
        return model

    watched.load_model = load_model
    return watched


def checked_pool(modelpool) -> BaseModelPool:
    """The pool (a mapping becomes a ``BaseModelPool``), refused without θ0 or fine-tuned models."""
    if not isinstance(modelpool, BaseModelPool):
        modelpool = BaseModelPool(modelpool)
    if not modelpool.has_pretrained:
        raise ValueError(
            f"LARV needs the pretrained model θ0: the model pool has no '{PRETRAINED}' entry "
            f"(models: {modelpool.all_model_names})"
        )
    if not modelpool.model_names:
        raise ValueError("LARV needs at least one fine-tuned model in the model pool")
    return modelpool


def check_checkpoints(modelpool: BaseModelPool, theta0, tied) -> List[str]:
    """Check every model the pool loads from disk against θ0, from the checkpoint files
    (``checkpoints.check_checkpoint``), before anything is merged. Returns the names whose
    weights are not on this disk yet (hub ids not downloaded): they are checked right after
    the pool loads them."""
    unchecked = []
    for name in modelpool.all_model_names:
        config = modelpool._models[name]
        if isinstance(config, nn.Module):
            continue  # in memory: checked on the module itself as the merger loads it
        path = checkpoint_path(config)
        if path is None:
            unchecked.append(name)
            continue
        check_checkpoint(name, path, theta0, tied)
    return unchecked


def load_theta0(modelpool: BaseModelPool, base_method, device) -> Tuple[Dict[str, torch.Tensor], Callable]:
    """θ0 (a float snapshot), checked; every checkpoint on disk checked against it before
    anything is merged. Returns ``(theta0, check_model)``: the check :func:`watched_pool` runs
    on every model it hands out (half precision; hub downloads checked from their files)."""
    pretrained = modelpool.load_pretrained_model()
    tied = tied_groups(pretrained.state_dict())
    theta0 = snapshot(float_state_dict(pretrained))
    del pretrained
    check_finite(PRETRAINED, theta0)
    check_half_precision(base_method, PRETRAINED, theta0, device)
    unchecked = set(check_checkpoints(modelpool, theta0, tied))

    def check_model(name: str, state: Mapping[str, torch.Tensor]) -> None:
        check_half_precision(base_method, name, state, device)
        if name in unchecked:  # a hub download the pool just made: its files are here now
            path = checkpoint_path(modelpool._models[name])
            if path is not None:
                check_checkpoint(name, path, theta0, tied)
            unchecked.discard(name)

    return theta0, check_model
