"""Loading models into upstream's classes, offline: diffusers folders, single files, tokenizers.

``load_pipeline(path)`` takes a diffusers-layout folder or a single-file
checkpoint (``.safetensors`` in the original LDM/SGM layout) and returns
upstream's ``StableDiffusion`` or ``StableDiffusionXL``. A file that does not
fully load, or a config upstream cannot honour, is a :class:`ModelError`
naming the file and field.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Optional, Union

from ..tensorfile import TensorFileError
from .config import ModelError, ModelNotFoundError
from .folder import downsampling, is_model_folder, latent_size, load_folder

PathLike = Union[str, Path]
LOAD_ERRORS = (ModelError, TensorFileError)

__all__ = [
    "LOAD_ERRORS",
    "ModelError",
    "ModelNotFoundError",
    "downsampling",
    "is_model_folder",
    "is_model_path",
    "latent_size",
    "load_pipeline",
]


def is_model_path(path: PathLike) -> bool:
    """A diffusers-layout folder or a ``.safetensors`` file."""
    path = Path(path)
    return is_model_folder(path) or (path.is_file() and path.suffix == ".safetensors")


def load_pipeline(
    path: PathLike,
    sd_module: Optional[ModuleType] = None,
    float16: bool = False,
    config: Optional[PathLike] = None,
    tokenizer: Optional[PathLike] = None,
):
    """Upstream's pipeline from a diffusers folder or a single-file checkpoint.

    ``config`` and ``tokenizer`` apply to single files only (which carry neither):
    a diffusers folder of the model's configs (weights not needed), and a CLIP
    tokenizer folder.
    """
    path = Path(path)
    if path.is_dir():
        if config is not None or tokenizer is not None:
            raise ModelError(
                f"{path}: a model folder has its own configs and tokenizers"
            )
        return load_folder(path, sd_module, float16)
    if path.suffix == ".safetensors":
        from .single_file import load_single_file

        return load_single_file(path, sd_module, float16, config, tokenizer)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file or folder")
    raise ModelError(
        f"{path}: expected a diffusers-layout folder or a single-file .safetensors checkpoint"
    )
