"""Diffusers-layout model folders, loaded into upstream's classes, offline.

A folder holds ``unet/``, ``text_encoder/``, ``vae/``, ``tokenizer/`` and
``scheduler/`` (plus ``text_encoder_2/`` and ``tokenizer_2/`` for SDXL), each with
its ``config.json`` and weights (one ``.safetensors`` or shards with an index
json). Configs are checked by :mod:`.config`, weights are mapped with upstream's
own ``model_io.map_*_weights`` and every parameter must be set (:mod:`.weights`).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Dict, Optional, Tuple, Union

import mlx.core as mx

from .config import (
    AutoencoderSpec,
    ModelError,
    ModelNotFoundError,
    SchedulerSpec,
    Specs,
    TextEncoderSpec,
    UNetSpec,
)
from .tokenizer import load_tokenizer
from .weights import load_into, read_part

PathLike = Union[str, Path]
UNET_WEIGHTS = "diffusion_pytorch_model"
TEXT_WEIGHTS = "model"
# buffers some checkpoints carry that are no parameter (transformers < 4.31 saved them)
TEXT_BUFFERS = ("embeddings.position_ids",)


def upstream_module(sd_module: Optional[ModuleType]) -> ModuleType:
    if sd_module is not None:
        return sd_module
    from .. import upstream

    return upstream.load(patched=True)


def without_buffers(tensors: Dict[str, mx.array]) -> Dict[str, mx.array]:
    return {k: v for k, v in tensors.items() if not k.endswith(TEXT_BUFFERS)}


def build_unet(sd: ModuleType, spec: UNetSpec, tensors, source: str, float16=False):
    spec.check_dtype(float16, source)
    model = sd.unet.UNetModel(spec.upstream(sd))
    load_into(model, sd.model_io.map_unet_weights, tensors, source, float16)
    return model


def build_text_encoder(
    sd: ModuleType, spec: TextEncoderSpec, tensors, source: str, float16=False
):
    model = sd.clip.CLIPTextModel(spec.upstream(sd))
    load_into(
        model,
        sd.model_io.map_clip_text_encoder_weights,
        without_buffers(tensors),
        source,
        float16,
    )
    return model


def build_autoencoder(sd: ModuleType, spec: AutoencoderSpec, tensors, source: str):
    model = sd.vae.Autoencoder(spec.upstream(sd))
    load_into(model, sd.model_io.map_vae_weights, tensors, source, False)
    return model


def load_unet(sd: ModuleType, part: Path, float16: bool = False, spec=None):
    """The UNet of a folder's ``unet/`` part."""
    spec = spec or UNetSpec.from_file(Path(part) / "config.json")
    tensors, source = read_part(Path(part), UNET_WEIGHTS)
    return build_unet(sd, spec, tensors, source, float16)


def load_text_encoder(sd: ModuleType, part: Path, float16: bool = False, spec=None):
    """The text encoder of a folder's ``text_encoder/`` (or ``text_encoder_2/``) part."""
    spec = spec or TextEncoderSpec.from_file(Path(part) / "config.json")
    tensors, source = read_part(Path(part), TEXT_WEIGHTS)
    return build_text_encoder(sd, spec, tensors, source, float16)


def load_autoencoder(sd: ModuleType, part: Path, float16: bool = False, spec=None):
    """The autoencoder of a folder's ``vae/`` part (always float32, as upstream keeps it)."""
    spec = spec or AutoencoderSpec.from_file(Path(part) / "config.json")
    tensors, source = read_part(Path(part), UNET_WEIGHTS)
    return build_autoencoder(sd, spec, tensors, source)


def load_diffusion_config(sd: ModuleType, part: Path):
    return SchedulerSpec.from_file(Path(part) / "scheduler_config.json").upstream(sd)


def folder_specs(folder: PathLike) -> Specs:
    """Every config of a model folder, parsed, validated and checked to fit together."""
    folder = Path(folder)
    texts = (
        ("text_encoder", "text_encoder_2")
        if is_sdxl_folder(folder)
        else ("text_encoder",)
    )
    return Specs(
        UNetSpec.from_file(folder / "unet" / "config.json"),
        tuple(TextEncoderSpec.from_file(folder / t / "config.json") for t in texts),
        AutoencoderSpec.from_file(folder / "vae" / "config.json"),
        SchedulerSpec.from_file(folder / "scheduler" / "scheduler_config.json"),
    ).check(folder)


def is_model_folder(folder: PathLike) -> bool:
    folder = Path(folder)
    return all((folder / p).is_dir() for p in ("unet", "text_encoder", "vae"))


def is_sdxl_folder(folder: PathLike) -> bool:
    return (Path(folder) / "text_encoder_2").is_dir()


def assemble(
    sd: ModuleType,
    sdxl: bool,
    float16: bool,
    diffusion_config,
    unet,
    autoencoder,
    encoders,
    tokenizers,
):
    """A StableDiffusion(XL) object from loaded parts, set up as upstream's constructors do."""
    cls = sd.StableDiffusionXL if sdxl else sd.StableDiffusion
    pipe = cls.__new__(cls)
    pipe.dtype = mx.float16 if float16 else mx.float32
    pipe.diffusion_config = diffusion_config
    pipe.unet = unet
    pipe.autoencoder = autoencoder
    if sdxl:
        pipe.sampler = sd.sampler.SimpleEulerAncestralSampler(diffusion_config)
        pipe.text_encoder_1, pipe.text_encoder_2 = encoders
        pipe.tokenizer_1, pipe.tokenizer_2 = tokenizers
    else:
        pipe.sampler = sd.sampler.SimpleEulerSampler(diffusion_config)
        (pipe.text_encoder,) = encoders
        (pipe.tokenizer,) = tokenizers
    pipe.ensure_models_are_loaded()
    return pipe


def check_pooled_token(tokenizer, where: str) -> None:
    """Upstream pools SDXL's text at the largest token id: it must be the end token."""
    largest = max(tokenizer.vocab.values())
    if tokenizer.eos_token != largest:
        raise ModelError(
            f"{where}: the end token {tokenizer.eos!r} has id {tokenizer.eos_token}, "
            f"not the largest ({largest}); upstream pools the text at the largest id"
        )


def load_folder(
    folder: PathLike, sd_module: Optional[ModuleType] = None, float16: bool = False
):
    """A StableDiffusion (or StableDiffusionXL) object from a local diffusers folder.

    SD 1.x/2.x folders give ``StableDiffusion`` with upstream's Euler sampler;
    folders with ``text_encoder_2`` give ``StableDiffusionXL`` (Euler ancestral),
    as upstream's constructors do. The autoencoder stays in float32.
    """
    folder = Path(folder)
    if not is_model_folder(folder):
        raise ModelNotFoundError(
            f"{folder}: not a diffusers-layout model folder (expected unet/, text_encoder/, vae/)"
        )
    specs = folder_specs(folder)  # all configs checked before any weights are read
    sd = upstream_module(sd_module)
    names = ("", "_2") if specs.sdxl else ("",)
    tokenizers = tuple(load_tokenizer(sd, folder / f"tokenizer{n}") for n in names)
    if specs.sdxl:
        check_pooled_token(tokenizers[1], str(folder / "tokenizer_2"))
    encoders = tuple(
        load_text_encoder(sd, folder / f"text_encoder{n}", float16, spec)
        for n, spec in zip(names, specs.text)
    )
    return assemble(
        sd,
        specs.sdxl,
        float16,
        specs.scheduler.upstream(sd),
        load_unet(sd, folder / "unet", float16, specs.unet),
        load_autoencoder(sd, folder / "vae", spec=specs.vae),
        encoders,
        tokenizers,
    )


def downsampling(pipe) -> int:
    """How many image pixels one latent pixel spans along each side."""
    return 2 ** (len(pipe.autoencoder.decoder.up_blocks) - 1)


def folder_image_size(folder: PathLike) -> int:
    """The folder's image size (its vae config's sample_size)."""
    path = Path(folder) / "vae" / "config.json"
    size = AutoencoderSpec.from_file(path).sample_size
    if not isinstance(size, int):
        raise ModelError(f"{path}: field 'sample_size' = {size!r}: expected an int")
    return size


def latent_size(
    pipe, image_size: Optional[int] = None, folder: Optional[PathLike] = None
) -> Tuple[int, int]:
    """The latent (H, W) for an image size (default: the folder's vae sample_size)."""
    if image_size is None:
        image_size = folder_image_size(folder)
    down = downsampling(pipe)
    return (image_size // down, image_size // down)
