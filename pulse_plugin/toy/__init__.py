"""A small text-to-image model the project trains itself, and its tools.

``default_model_path()`` is the committed model folder (diffusers layout);
``pulse_plugin.models.load_pipeline`` loads it, or any local model folder or
single-file checkpoint, into upstream's classes; ``folder`` writes one.
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"


def default_model_path() -> Path:
    """The folder of the committed toy model."""
    return MODEL_DIR
