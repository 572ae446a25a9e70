"""One text-to-image loop for every caller: upstream's sampler, evaluated step by step.

The loop stops with ``NonFiniteError`` as soon as the latents hold a NaN or an
infinity, naming the step and what was active then, and ``decode`` refuses a
non-finite picture: a broken run never becomes a black image.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Callable, Iterable, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from . import checks, memory
from .tokens import check_prompt


class NonFiniteError(RuntimeError):
    """The latents or the decoded images of a generation hold NaN or infinity."""


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
    checks.integer("num_steps", num_steps, 1)
    checks.number("cfg_weight", cfg_weight)
    checks.integer("seed", seed, 0, 2**64 - 1)
    checks.integer("n_images", n_images, 1)
    check_prompt(pipe, prompt)
    check_prompt(pipe, negative_text, "negative")
    check_latent_size(pipe, latent_size)
    memory.check_fits(pipe, latent_size, n_images, cfg_weight)
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
    for i, x in enumerate(steps):
        mx.eval(x, *(extra() if extra is not None else ()))
        if not finite(x):
            raise NonFiniteError(nonfinite_message(pipe, i, num_steps, cfg_weight))
    return x


def unet_multiple(pipe) -> int:
    """The latent side must be a multiple of this: 2 per downsampling level of the UNet."""
    return 2 ** sum("downsample" in block for block in pipe.unet.down_blocks)


def check_latent_size(pipe, latent_size: Tuple[int, int]) -> None:
    """ValueError unless the UNet can take latents of this (H, W)."""
    m = unet_multiple(pipe)
    if len(latent_size) != 2 or not all(
        isinstance(v, numbers.Integral) and v >= m and v % m == 0 for v in latent_size
    ):
        raise ValueError(
            f"latent_size: expected two positive multiples of {m} for this UNet "
            f"(it halves the latents {m.bit_length() - 1} times), got {tuple(latent_size)}"
        )


def finite(x: mx.array) -> bool:
    """Whether every value of x is finite."""
    return bool(mx.all(mx.isfinite(x)).item())


def nonfinite_message(pipe, step: int, num_steps: int, cfg_weight: float) -> str:
    """What was running when the latents turned non-finite."""
    from .pulse import active_techniques

    hooks = getattr(pipe.unet, "hooks", None)
    info = getattr(hooks, "step", None) if getattr(hooks, "enabled", False) else None
    sigma = f", sigma {info.sigma:.4g}" if info is not None else ""
    active = active_techniques(pipe)
    return (
        f"the latents turned non-finite (NaN or inf) at step {step} of {num_steps}"
        f"{sigma}, cfg {cfg_weight:g}; active then: "
        + ("; ".join(active) if active else "no technique or LoRA")
        + ". Nothing was written; check the weights of the techniques, LoRAs and model."
    )


def decode(pipe, latents: mx.array) -> np.ndarray:
    """Decoded images (N, H, W, 3), float32 in [0, 1]."""
    images = pipe.decode(latents)
    mx.eval(images)
    if not finite(images):
        raise NonFiniteError(
            "the decoded image is non-finite (NaN or inf) although the latents are "
            "finite: the autoencoder's weights are broken. Nothing was written."
        )
    return np.array(images.astype(mx.float32))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as uint8."""
    return (np.asarray(image) * 255).round().astype(np.uint8)
