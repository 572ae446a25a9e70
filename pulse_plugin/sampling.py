"""One text-to-image loop for every caller: upstream's sampler, evaluated step by step."""

from __future__ import annotations

import inspect
from typing import Callable, Iterable, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np


def default_latent_size(pipe) -> Tuple[int, int]:
    """The latent size ``pipe.generate_latents`` uses when given none (upstream's: 64x64)."""
    parameter = inspect.signature(pipe.generate_latents).parameters["latent_size"]
    return tuple(parameter.default)


def final_latents(
    pipe,
    prompt: str,
    *,
    num_steps: int,
    cfg_weight: float,
    latent_size: Optional[Tuple[int, int]],
    seed: int,
    n_images: int = 1,
    negative_text: str = "",
    extra: Optional[Callable[[], Sequence[mx.array]]] = None,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> mx.array:
    """The last latents of upstream's ``generate_latents`` (latent_size None: the pipe's default).

    ``extra()`` returns lazy arrays (an observer's records) to evaluate with each
    step's latents; ``progress`` wraps the step iterator (a progress bar).
    """
    steps = pipe.generate_latents(
        prompt,
        n_images=n_images,
        num_steps=num_steps,
        cfg_weight=cfg_weight,
        negative_text=negative_text,
        latent_size=tuple(latent_size or default_latent_size(pipe)),
        seed=seed,
    )
    if progress is not None:
        steps = progress(steps)
    x = None
    for x in steps:
        mx.eval(x, *(extra() if extra is not None else ()))
    return x


def decode(pipe, latents: mx.array) -> np.ndarray:
    """Decoded images (N, H, W, 3), float32 in [0, 1]."""
    images = pipe.decode(latents)
    mx.eval(images)
    return np.array(images.astype(mx.float32))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as uint8."""
    return (np.asarray(image) * 255).round().astype(np.uint8)
