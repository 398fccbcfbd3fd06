"""State-dict helpers of LARV: snapshots, checks, lazy updates and the in-place rescale.

Functions on ``{name: tensor}`` mappings, no Hydra and no pools. :func:`rescale_update_` is the
one operation LARV applies to weights, ``theta <- theta0 + lambda (theta - theta0)``: the ``post``
veneer on the merged model and the ``pre`` veneer on each fine-tuned model. It leaves tensors
whose scale is exactly 1 untouched, so ``gate=identity`` reproduces the base merger bit for bit.
"""

from typing import Dict, Iterable, Iterator, Mapping

import torch
from torch import Tensor

__all__ = ["float_state_dict", "snapshot", "restore_", "check_finite", "check_compatible", "Delta",
           "rescale_update_", "task_sum_l1"]


def float_state_dict(model: torch.nn.Module) -> Dict[str, Tensor]:
    """The model's floating-point state-dict entries (views on its parameters, not copies)."""
    return {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def snapshot(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A detached copy on CPU (θ0 must survive mergers that modify the pretrained model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


@torch.no_grad()
def restore_(state_dict: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> None:
    """In place: every tensor of ``state_dict`` takes the value of ``reference`` (e.g. θ0 back
    into a pretrained model a merger wrote into)."""
    for key, value in state_dict.items():
        value.copy_(reference[key])


def check_finite(name: str, state_dict: Mapping[str, Tensor]) -> None:
    """Raise ``ValueError`` naming the model and the first tensors holding NaN or Inf."""
    # Fast path: a finite sum proves every entry finite (NaN and Inf propagate); a sum that
    # overflows (huge but finite entries) falls back to the exact element-wise check.
    bad = [
        k for k, v in state_dict.items()
        if not bool(torch.isfinite(v.sum())) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ValueError(
            f"model '{name}' has NaN or Inf values in {len(bad)} tensor(s), e.g. {bad[:3]}"
        )


def check_compatible(
    name: str, state_dict: Mapping[str, Tensor], reference: Mapping[str, Tensor]
) -> None:
    """Raise ``ValueError`` if ``state_dict`` does not have the reference's keys and shapes."""
    missing = [k for k in reference if k not in state_dict]
    extra = [k for k in state_dict if k not in reference]
    if missing or extra:
        raise ValueError(
            f"model '{name}' does not match the pretrained model's parameters: "
            f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}"
        )
    for k, ref in reference.items():
        if state_dict[k].shape != ref.shape:
            raise ValueError(
                f"model '{name}': parameter '{k}' has shape {tuple(state_dict[k].shape)}, "
                f"the pretrained model has {tuple(ref.shape)}"
            )


class Delta(Mapping[str, Tensor]):
    """``{key: weights[key] - base[key]}`` computed on access (no full copy of the update)."""

    def __init__(self, weights: Mapping[str, Tensor], base: Mapping[str, Tensor]):
        self._weights, self._base = weights, base

    def __getitem__(self, key: str) -> Tensor:
        w = self._weights[key]
        return w.detach() - self._base[key].to(w.device, w.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


@torch.no_grad()
def rescale_update_(
    state_dict: Mapping[str, Tensor], base: Mapping[str, Tensor], scales: Mapping[str, float]
) -> int:
    """In place: ``θ[k] ← θ0[k] + λ_k (θ[k] − θ0[k])`` for every key whose scale is not 1.

    Returns the number of tensors changed. Keys with λ == 1 are not touched at all, so an
    all-ones schedule leaves the weights bit-identical.
    """
    changed = 0
    for key, lam in scales.items():
        if lam == 1.0:
            continue
        w = state_dict[key]
        b = base[key].to(w.device, w.dtype)
        w.sub_(b).mul_(lam).add_(b)
        changed += 1
    return changed


def task_sum_l1(states: Iterable[Mapping[str, Tensor]], base: Mapping[str, Tensor]) -> float:
    """``||sum_t (state_t - base)||_1`` over ``base``'s keys, accumulated in float64 (one state
    in memory at a time, plus the running sum). One state gives the L1 norm of its update."""
    total = {key: torch.zeros_like(value, dtype=torch.float64) for key, value in base.items()}
    for state in states:
        for key, acc in total.items():
            acc += state[key].double() - base[key].double()
    return sum(float(acc.abs().sum()) for acc in total.values())
