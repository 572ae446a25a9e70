"""A small text-to-image model the project trains itself, and its tools.

``load()`` is the one-liner the docs use: the committed toy model in upstream's
patched ``StableDiffusion``, sampling at its own size. ``default_model_path()``
is its folder (diffusers layout); ``pulse_plugin.models.load_pipeline`` loads
it, or any local model folder or single-file checkpoint, into upstream's
classes; ``folder`` writes one. ``example(name)`` is a file of the
repository's ``examples/`` folder.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Union

MODEL_DIR = Path(__file__).resolve().parent / "model"
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def default_model_path() -> Path:
    """The folder of the committed toy model."""
    return MODEL_DIR


def load(path: Optional[Union[str, Path]] = None):
    """The toy model (or ``path``, or ``$PULSE_TOY_MODEL``) in patched upstream, offline.

    Its ``generate_latents`` defaults to the model's own latent size (8x8 for the
    toy's 32 px images) instead of upstream's 64x64; ``latent_size=`` overrides it.
    """
    from ..models import latent_size
    from . import effects

    pipe = effects.load_toy(path)
    size = latent_size(pipe, folder=effects.model_path(path))
    pipe.generate_latents = functools.partial(pipe.generate_latents, latent_size=size)
    return pipe


def example(name: str) -> Path:
    """``examples/NAME`` of the source checkout this package runs from (editable install)."""
    path = EXAMPLES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such example file; the examples ship with the source "
            "checkout (pip install -e .), not with a wheel"
        )
    return path
