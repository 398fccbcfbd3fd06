"""Which library does the diagnostics' CPU linear algebra: one backend object, chosen once.

``cpu_linalg`` (a user key) names a backend; :func:`cpu_backend` turns the name into a
:class:`Linalg` at the boundary, as ``diagnostics_precision`` becomes a dtype, and the diagnostics engine
only ever calls the object's methods.

* ``numpy``: Gram products and eigenvalues through numpy (``matmul``, ``linalg.eigvalsh``: its
  bundled OpenBLAS and LAPACK). ``Tensor.numpy()`` shares memory, so products are written in
  place and strided views cost no copy (numpy hands ``A^T A`` to BLAS ``syrk``).
* ``torch``: ``torch.matmul`` and ``torch.linalg.eigvalsh`` (torch's own BLAS/LAPACK, MKL in
  PyPI's x86 wheels).

The arithmetic and precision are the same, results equal to round-off (tests: 1e-12). On the
2-core AMD EPYC machine of docs/performance.md numpy was 1.4x faster at 1 thread and 1.3x at 2
threads on ViT-B/32 shapes (MKL's float64 GEMM ran at half speed there). Tensors on any other
device always go through torch, whichever backend is chosen.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, Optional, Tuple, Union

import numpy as np
import threadpoolctl
import torch
from torch import Tensor

__all__ = ["CPU_LINALG", "Linalg", "cpu_backend"]

#: the names users give ``cpu_linalg``
CPU_LINALG: Tuple[str, ...] = ("numpy", "torch")


@contextlib.contextmanager
def blas_threads(limit: Optional[int]) -> Iterator[None]:
    """Limit numpy's BLAS threads (threadpoolctl) inside the block; ``None``: unchanged."""
    if limit is None:
        yield
        return
    with threadpoolctl.threadpool_limits(limits=limit, user_api="blas"):
        yield


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the block on ``threads`` torch CPU threads (``None``: unchanged) and restore the
    caller's count afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _eigvalsh_torch_one_thread(grams: Tensor) -> Tensor:
    torch.set_num_threads(1)  # per OS thread: the caller's setting is unchanged
    return torch.linalg.eigvalsh(grams)


def _eigvalsh_numpy(grams: Tensor) -> Tensor:
    """LAPACK ``?syevd`` of numpy's OpenBLAS on a CPU batch; releases the GIL."""
    return torch.from_numpy(np.linalg.eigvalsh(grams.detach().numpy()))


class Linalg:
    """Products and batched eigenvalues of the diagnostics on one CPU library.

    Attributes:
        name: ``"numpy"`` or ``"torch"`` (one of :data:`CPU_LINALG`).
    """

    def __init__(self, name: str):
        self.name = name
        self._numpy = name == "numpy"

    def __repr__(self) -> str:
        return f"Linalg({self.name!r})"

    def uses_numpy(self, t: Tensor) -> bool:
        """Whether ``t`` goes through numpy (numpy backend and a CPU tensor)."""
        return self._numpy and t.device.type == "cpu"

    def matmul(self, a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """``a @ b``, into ``out`` if given."""
        if not self.uses_numpy(a):
            return torch.matmul(a, b, out=out) if out is not None else a @ b
        a, b = a.detach().numpy(), b.detach().numpy()
        if out is None:
            return torch.from_numpy(np.matmul(a, b))
        np.matmul(a, b, out=out.detach().numpy())
        return out

    def eigvalsh(self, grams: Tensor, workers: Optional[int] = None) -> Tensor:
        """Eigenvalues of a ``(B, n, n)`` batch of symmetric matrices.

        On CPU, LAPACK's symmetric solver (tridiagonalisation) is memory-bound, scales poorly
        with BLAS threads, and both libraries solve a batch one matrix after the other. With
        ``workers`` (default ``torch.get_num_threads()``) ``> 1`` the batch is split into that
        many parts solved concurrently, one BLAS thread each: the same routine and the same
        results, ~1.4x faster on 2 cores.
        """
        if grams.device.type != "cpu":
            return torch.linalg.eigvalsh(grams)
        numpy_path = self.uses_numpy(grams)
        workers = min(torch.get_num_threads() if workers is None else workers, grams.shape[0])
        if workers < 2:
            if numpy_path:
                with blas_threads(1):
                    return _eigvalsh_numpy(grams)
            return torch.linalg.eigvalsh(grams)
        solve = _eigvalsh_numpy if numpy_path else _eigvalsh_torch_one_thread
        with blas_threads(1 if numpy_path else None), ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(solve, grams.tensor_split(workers)))
        return torch.cat(parts)

    @contextlib.contextmanager
    def threads(self, workers: int, device: Union[str, torch.device, None] = None) -> Iterator[None]:
        """The thread setting of a whole diagnostics run.

        numpy on CPU: numpy's BLAS gets ``workers`` threads and torch's own (small, elementwise)
        work one thread meanwhile, so that OpenBLAS's and OpenMP's spinning worker threads do
        not compete; torch's setting is restored on exit. Otherwise nothing changes.
        """
        if not (self._numpy and (device is None or torch.device(device).type == "cpu")):
            yield
            return
        with torch_threads(1), blas_threads(workers):
            yield


_BACKENDS: Dict[str, Linalg] = {name: Linalg(name) for name in CPU_LINALG}


def cpu_backend(cpu_linalg: Union[str, Linalg]) -> Linalg:
    """The backend named ``cpu_linalg`` (a ``Linalg`` is returned as is).

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(cpu_linalg, Linalg):
        return cpu_linalg
    if cpu_linalg not in CPU_LINALG:
        raise ValueError(f"cpu_linalg must be one of {list(CPU_LINALG)}, got {cpu_linalg!r}")
    return _BACKENDS[cpu_linalg]
