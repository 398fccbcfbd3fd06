"""Image corruptions of the embedded benchmark's robustness splits (the paper's Figures 3 and 5).

FusionBench's robustness pool evaluates a merge of the Cars, EuroSAT, RESISC45 and GTSRB towers on
seven corrupted copies of those test sets, named after ImageNet-C's corruption types (Hendrycks
and Dietterich, ICLR 2019): contrast, gaussian_noise, impulse_noise, jpeg_compression,
motion_blur, pixelate and spatter. This module implements the same seven on the suite's
``32 × 32`` RGB images with numpy and Pillow only, each at **one** fixed severity
(:data:`SEVERITY`, the values and why in docs/benchmark.md, "Corrupted test splits").

Every corruption is a pure function ``f(images, rng, **params) -> images``: ``images`` is a
``uint8 [N, H, W, 3]`` array (never modified), the result has the same shape and dtype, and every
random draw comes from ``rng`` (a ``numpy.random.Generator``), so the same seed gives the same
bytes. ``contrast`` and ``jpeg_compression`` draw nothing. :func:`corrupt` applies one type at its
fixed severity. The whole image is corrupted, the task's frame (``tasks.add_frame``) included,
as ImageNet-C corrupts the whole photograph.

Definitions (``x`` in ``[0, 1]``; ImageNet-C's, scaled to 32 px, with the deviations named):

* ``gaussian_noise``: ``x + N(0, sigma²)`` per value.
* ``impulse_noise``: salt-and-pepper per value (each colour channel on its own, as ImageNet-C's
  ``skimage.util.random_noise(mode="s&p")``): a fraction ``amount`` of the values set to 0 or 1,
  half each.
* ``contrast``: ``(x − m)·factor + m``, ``m`` each image's per-channel mean.
* ``jpeg_compression``: a Pillow JPEG round trip at ``quality`` (Pillow's default 4:2:0 chroma
  subsampling). The bytes depend on Pillow's libjpeg build.
* ``pixelate``: box-downsample to ``round(32·factor)`` px, box-upsample back.
* ``motion_blur``: a one-sided linear blur along a random direction (uniform in ±45°, as
  ImageNet-C's), ``length`` taps ``k = 0 … length−1`` weighted ``exp(−k²/2σ²)``, sampled
  bilinearly with the border repeated. ImageNet-C calls ImageMagick's motion blur; this is the
  same kernel written in numpy (no Wand/ImageMagick dependency).
* ``spatter``: ImageNet-C's "mud" spatter: Gaussian noise smoothed with ``sigma`` px, each image's
  smoothed field standardised, drops where it exceeds ``threshold`` (about ``P(Z > threshold)``
  of the image covered), drop edges softened by a ``soften`` px blur, blended in a mud colour at
  ``opacity``. ImageNet-C's lower severities use a "water" variant built on OpenCV edge maps; we
  use the mud variant only (no OpenCV dependency).
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from typing import Callable, Dict, Mapping

import numpy as np
from PIL import Image

__all__ = ["CORRUPTIONS", "SEVERITY", "corrupt", "contrast", "gaussian_noise", "impulse_noise",
           "jpeg_compression", "motion_blur", "pixelate", "spatter"]


def _check(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise TypeError(f"images: expected a uint8 array [N, H, W, 3], got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    return images


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats → uint8, rounded and clipped."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _gaussian_blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``[N, H, W]`` over H and W (reflected border)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(taps ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    out = field.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return out


def gaussian_noise(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sigma`` (on the ``[0, 1]`` scale)."""
    x = _check(images) / 255.0
    return _to_uint8(x + rng.normal(0.0, sigma, size=x.shape))


def impulse_noise(images: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Salt-and-pepper noise on a fraction ``amount`` of the values (per channel)."""
    out = _check(images).copy()
    u = rng.random(out.shape)
    out[u < amount / 2] = 0
    out[u > 1 - amount / 2] = 255
    return out


def contrast(images: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """Contrast scaled by ``factor`` around each image's per-channel mean (``rng`` unused)."""
    x = _check(images) / 255.0
    mean = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((x - mean) * factor + mean)


def jpeg_compression(images: np.ndarray, rng: np.random.Generator, quality: int, subsampling: int = 0) -> np.ndarray:
    """A JPEG round trip at ``quality`` through Pillow; ``subsampling``: Pillow's chroma
    subsampling (0: 4:4:4, 1: 4:2:2, 2: 4:2:0) (``rng`` unused)."""
    out = np.empty_like(_check(images))
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality), subsampling=int(subsampling))
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def pixelate(images: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """Box-downsample by ``factor`` and box-upsample back (``rng`` unused)."""
    out = np.empty_like(_check(images))
    h, w = images.shape[1:3]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize(small, Image.BOX).resize((w, h), Image.BOX))
    return out


def _shift_bilinear(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image[y + dy, x + dx]`` sampled bilinearly, coordinates clamped to the border."""
    h, w = image.shape[:2]
    ys = np.clip(np.arange(h, dtype=np.float64) + dy, 0, h - 1)
    xs = np.clip(np.arange(w, dtype=np.float64) + dx, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def motion_blur(images: np.ndarray, rng: np.random.Generator, length: int, sigma: float) -> np.ndarray:
    """One-sided linear motion blur of ``length`` taps (Gaussian weights, ``sigma`` px) along a
    direction drawn uniformly in ±45° per image."""
    x = _check(images).astype(np.float64)
    taps = np.arange(int(length), dtype=np.float64)
    weights = np.exp(-(taps ** 2) / (2 * sigma ** 2))
    weights /= weights.sum()
    angles = np.deg2rad(rng.uniform(-45.0, 45.0, size=len(x)))
    out = np.empty_like(x)
    for i, (image, angle) in enumerate(zip(x, angles)):
        out[i] = sum(wk * _shift_bilinear(image, k * math.cos(angle), k * math.sin(angle)) for k, wk in zip(taps, weights))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


#: the mud colour of ImageNet-C's spatter (RGB, 0-255)
MUD = (63, 42, 20)


def spatter(images: np.ndarray, rng: np.random.Generator, sigma: float, threshold: float, soften: float,
            opacity: float) -> np.ndarray:
    """Mud drops: smoothed noise above ``threshold`` (in standard deviations), edges softened by
    ``soften`` px, blended at ``opacity`` in :data:`MUD`."""
    x = _check(images) / 255.0
    field = _gaussian_blur(rng.normal(size=x.shape[:3]), sigma)
    field = (field - field.mean(axis=(1, 2), keepdims=True)) / (field.std(axis=(1, 2), keepdims=True) + 1e-12)
    drops = _gaussian_blur((field > threshold).astype(np.float64), soften)
    alpha = (opacity * drops)[..., None]
    return _to_uint8(x * (1 - alpha) + alpha * (np.asarray(MUD, dtype=np.float64) / 255.0))


_FUNCTIONS: Dict[str, Callable[..., np.ndarray]] = OrderedDict(
    contrast=contrast, gaussian_noise=gaussian_noise, impulse_noise=impulse_noise,
    jpeg_compression=jpeg_compression, motion_blur=motion_blur, pixelate=pixelate, spatter=spatter,
)

#: the seven types, in FusionBench's (alphabetical) order
CORRUPTIONS = tuple(_FUNCTIONS)

#: each type's one fixed severity (docs/benchmark.md, "Corrupted test splits", says why)
SEVERITY: Mapping[str, Mapping[str, float]] = OrderedDict(
    contrast=dict(factor=0.5),
    gaussian_noise=dict(sigma=0.12),
    impulse_noise=dict(amount=0.03),
    jpeg_compression=dict(quality=25, subsampling=0),
    motion_blur=dict(length=3, sigma=1.0),
    pixelate=dict(factor=0.75),
    spatter=dict(sigma=1.5, threshold=1.0, soften=0.7, opacity=0.6),
)


def corrupt(images: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """``images`` corrupted by type ``name`` at its fixed severity (:data:`SEVERITY`)."""
    if name not in _FUNCTIONS:
        raise ValueError(f"corruption: expected one of {list(CORRUPTIONS)}, got {name!r}")
    return _FUNCTIONS[name](images, rng, **SEVERITY[name])
