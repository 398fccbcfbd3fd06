"""Each task's own low-level look (``Recipe.task_grating``, ``Recipe.task_colour_mix``).

The generator already frames every task's images in a pair of colours of its own
(:func:`.tasks.add_frame`). With either recipe field above 0, every image a task draws
(pretraining, train, validation and test alike) also passes through a fixed transform of that
task: a colour mixing ``I + task_colour_mix · N(0, 1)`` (3 × 3) and a faint sine grating of
amplitude ``task_grating`` (random orientation, frequency, phase and colour), both drawn from
the task's name only, so they are the same for every seed and split. Real downstream data sets
differ in such low-level statistics (sensor, lighting, texture) more than a shared renderer
makes them. Both at 0, the default, leave the images untouched, and the recipe then records
neither field, so the recipes and weights made before the fields existed are unchanged. The
research builds of docs/benchmark.md's layer-wise section that name "per-task domains of
amplitude 40" are ``task_grating=40, task_colour_mix=0.25``.
"""

from __future__ import annotations

import zlib

import numpy as np

from .tasks import IMAGE_SIZE


def apply_domain(images: np.ndarray, task: str, amplitude: float, mix: float) -> np.ndarray:
    """``images`` (uint8 ``[N, H, W, 3]``) in ``task``'s domain; the same array when both are 0."""
    if amplitude == 0 and mix == 0:
        return images
    rng = np.random.default_rng(zlib.crc32(task.encode()))
    colour = np.eye(3) + mix * rng.standard_normal((3, 3))
    theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.15, 0.8), rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    wave = np.sin(freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)[..., None] * rng.uniform(0.5, 1.0, 3)
    out = images.astype(np.float64) @ colour.T + amplitude * wave
    return np.clip(out, 0, 255).round().astype(np.uint8)
