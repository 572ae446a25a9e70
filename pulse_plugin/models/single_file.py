"""Single-file checkpoints (A1111/ComfyUI): one ``.safetensors`` in the original LDM/SGM layout.

The family (SD 1.x, SD 2.x, SDXL) is recognised from the tensor names; the
configs come from a diffusers folder the user gives (``config=``, configs and
tokenizers are enough, no weights) or from the built-in table of the released
architectures. The names are converted to diffusers' (:mod:`.ldm_names`) and
then go through upstream's own mapping, with every parameter checked as for
folders. Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import mlx.core as mx

from .. import tensorfile
from . import ldm_names as names
from .config import (
    AutoencoderSpec,
    ModelError,
    ModelNotFoundError,
    SchedulerSpec,
    Specs,
    TextEncoderSpec,
    UNetSpec,
)
from .folder import (
    assemble,
    build_autoencoder,
    build_text_encoder,
    build_unet,
    check_pooled_token,
    folder_specs,
)
from .tokenizer import load_tokenizer

# Tensors of the original checkpoints that are no part of the inference model: the
# noise schedule (upstream computes its own from the scheduler config) and below.
SCHEDULE_BUFFERS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
}
IGNORED_PREFIXES = (
    "model_ema.",  # the EMA copy training kept (the model itself is under model.*)
    "denoiser.",  # SGM's sigma tables
    "first_stage_model.loss.",  # the autoencoder's training loss (discriminator, LPIPS)
)
OPENCLIP_UNUSED = ("logit_scale", "attn_mask")


@dataclass(frozen=True)
class Family:
    name: str
    sdxl: bool
    text_prefixes: Tuple[str, ...]
    openclip: Tuple[bool, ...]  # per text encoder
    default_repo: str  # where a diffusers folder of its configs/tokenizers is published


SD1 = Family(
    "SD 1.x",
    False,
    (names.SD1_TEXT_PREFIX,),
    (False,),
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
)
SD2 = Family(
    "SD 2.x",
    False,
    (names.SD2_TEXT_PREFIX,),
    (True,),
    "stabilityai/stable-diffusion-2-1-base",
)
SDXL = Family(
    "SDXL",
    True,
    names.SDXL_TEXT_PREFIXES,
    (False, True),
    "stabilityai/stable-diffusion-xl-base-1.0",
)


def recognise(keys, path: str = "checkpoint") -> Family:
    """The model family a checkpoint's tensor names belong to."""
    keys = set(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if not has(names.UNET_PREFIX) or not has(names.VAE_PREFIX):
        tops = sorted({k.split(".")[0] for k in keys})[:8]
        raise ModelError(
            f"{path}: not a Stable Diffusion single-file checkpoint: expected model.diffusion_model.* "
            f"and first_stage_model.* tensors, found top-level names {tops}"
        )
    if has("conditioner.embedders.0.model."):
        raise ModelError(
            f"{path}: an SDXL refiner checkpoint (OpenCLIP-only conditioner): not supported"
        )
    if has(names.SDXL_TEXT_PREFIXES[0]) and has(names.SDXL_TEXT_PREFIXES[1]):
        return SDXL
    if has(names.SD2_TEXT_PREFIX):
        return SD2
    if has(names.SD1_TEXT_PREFIX):
        return SD1
    raise ModelError(
        f"{path}: a UNet and VAE but no text encoder of a known layout "
        "(cond_stage_model.transformer.*, cond_stage_model.model.*, conditioner.embedders.0/1.*)"
    )


CONV_IN = names.UNET_PREFIX + "input_blocks.0.0.weight"


def check_latent_input(shapes: Dict[str, Tuple[int, ...]], path: str) -> None:
    """Refuse UNets that take more than the latent (inpainting, instruct-pix2pix)."""
    shape = shapes.get(CONV_IN)
    out = shapes.get(names.UNET_PREFIX + "out.2.weight")
    if shape is None or out is None or len(shape) != 4:
        raise ModelError(f"{path}: no 4-D {CONV_IN} (the UNet's input convolution)")
    if shape[1] != out[0]:
        raise ModelError(
            f"{path}: the UNet takes {shape[1]} input channels and returns {out[0]} "
            "(an inpainting or image-conditioned model); upstream's pipeline feeds it "
            "only the latent"
        )


# ------------------------------------------------------------------ built-in configs
def _clip_l() -> dict:
    return dict(
        architectures=["CLIPTextModel"],
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        vocab_size=49408,
        hidden_act="quick_gelu",
    )


_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
)
_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    norm_num_groups=32,
)
BUILT_IN = {
    "SD 1.x": dict(
        unet=dict(
            in_channels=4,
            out_channels=4,
            block_out_channels=[320, 640, 1280, 1280],
            layers_per_block=2,
            attention_head_dim=8,
            cross_attention_dim=768,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            sample_size=64,
        ),
        text_encoders=[_clip_l()],
        vae=dict(_VAE, scaling_factor=0.18215, sample_size=512),
        scheduler=_SCHEDULER,
    ),
    "SDXL": dict(
        unet=dict(
            in_channels=4,
            out_channels=4,
            block_out_channels=[320, 640, 1280],
            layers_per_block=2,
            attention_head_dim=[5, 10, 20],
            transformer_layers_per_block=[1, 2, 10],
            cross_attention_dim=2048,
            down_block_types=[
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
            ],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            sample_size=128,
        ),
        text_encoders=[
            _clip_l(),
            dict(
                architectures=["CLIPTextModelWithProjection"],
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                max_position_embeddings=77,
                vocab_size=49408,
                hidden_act="gelu",
                projection_dim=1280,
            ),
        ],
        vae=dict(_VAE, scaling_factor=0.13025, sample_size=1024),
        scheduler=_SCHEDULER,
    ),
}


def _specs_from_folder(folder: Path, family: Family) -> Specs:
    specs = folder_specs(folder)
    if specs.sdxl != family.sdxl:
        raise ModelError(
            f"{folder}: the configs are for {'an SDXL' if specs.sdxl else 'an SD 1.x/2.x'} "
            f"model, the checkpoint is {family.name}"
        )
    return specs


def _specs_built_in(family: Family, path: Path) -> Specs:
    if family.name not in BUILT_IN:
        raise ModelError(
            f"{path}: an {family.name} checkpoint does not say whether it predicts epsilon "
            "(512 px base models) or v (768 px models, which upstream's sampler cannot run): "
            f"pass config=FOLDER (--model-config), a diffusers folder of its configs such as "
            f"{family.default_repo}"
        )
    table = BUILT_IN[family.name]
    where = f"built-in {family.name} config"
    specs = Specs(
        UNetSpec.from_dict(table["unet"], where + " (unet)"),
        tuple(
            TextEncoderSpec.from_dict(t, where + " (text encoder)")
            for t in table["text_encoders"]
        ),
        AutoencoderSpec.from_dict(table["vae"], where + " (vae)"),
        SchedulerSpec.from_dict(table["scheduler"], where + " (scheduler)"),
    )
    return specs.check(where)


# ------------------------------------------------------------------ tokenizers
def _hub_cache() -> Path:
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub")


def _cached_repo(repo: str) -> Optional[Path]:
    """A locally cached snapshot of a Hub repository (no download)."""
    snapshots = _hub_cache() / ("models--" + repo.replace("/", "--")) / "snapshots"
    found = sorted(snapshots.glob("*")) if snapshots.is_dir() else []
    return found[-1] if found else None


def tokenizer_folders(
    family: Family, path: Path, tokenizer: Optional[Path], config: Optional[Path]
) -> List[Path]:
    subs = ["tokenizer", "tokenizer_2"][: len(family.text_prefixes)]
    if tokenizer is not None and not all((tokenizer / s).is_dir() for s in subs):
        return [tokenizer] * len(subs)  # one CLIP vocabulary serves both SDXL encoders
    for base in (tokenizer, config, _cached_repo(family.default_repo)):
        if base is not None and all((base / s).is_dir() for s in subs):
            return [base / s for s in subs]
    raise ModelNotFoundError(
        f"{path}: a single-file checkpoint carries no tokenizer, and none was found offline. "
        "Pass tokenizer=FOLDER (--tokenizer: a CLIP tokenizer folder with tokenizer.json, or "
        "vocab.json and merges.txt) or config=FOLDER (--model-config: the diffusers folder of "
        f"{family.default_repo} without its weights, which has {'/ and '.join(subs)}/)"
    )


# ------------------------------------------------------------------ conversion
def _layout(spec: UNetSpec, path: str) -> names.UNetLayout:
    if len(set(spec.layers_per_block)) != 1:
        raise ModelError(
            f"{path}: the original layout needs one layers_per_block for every block"
        )
    return names.UNetLayout(
        levels=len(spec.block_out_channels),
        layers_per_block=spec.layers_per_block[0],
        down_attention=tuple("CrossAttn" in t for t in spec.down_block_types),
        up_attention=tuple("CrossAttn" in t for t in spec.up_block_types),
        text_time=spec.addition_embed_type == "text_time",
    )


def _convert(
    tensors, prefix: str, modules, path: str, to_2d: str = ""
) -> Dict[str, mx.array]:
    """Original names (under ``prefix``) to diffusers', module by module of the table."""
    out = {}
    for key, value in tensors.items():
        new = names.convert(key[len(prefix) :], modules, to_original=False)
        if new is None:
            raise ModelError(
                f"{path}: tensor {key!r} belongs to no module of this architecture"
            )
        if to_2d and to_2d in key and value.ndim == 4:
            # the original VAE attention projects with 1x1 convs, diffusers with linears
            value = value.reshape(value.shape[:2])
        out[new] = value
    return out


def _openclip(
    tensors, prefix: str, spec: TextEncoderSpec, path: str
) -> Dict[str, mx.array]:
    """OpenCLIP names (fused q/k/v) to transformers' CLIP names."""
    layers = {
        int(k[len(prefix) :].split(".")[2]) for k in tensors if ".resblocks." in k
    }
    n = spec.num_layers
    if layers and max(layers) == n and spec.projection_dim is None:
        # SD 2.x conditions on the penultimate layer: its last block is unused by design,
        # and so is its text projection (below)
        tensors = {k: v for k, v in tensors.items() if f".resblocks.{n}." not in k}
    modules = names.openclip_modules(n)
    out = {}
    for key, value in tensors.items():
        rest = key[len(prefix) :]
        if rest in OPENCLIP_UNUSED:
            continue
        if rest == names.OPENCLIP_POSITION[1]:
            out[names.OPENCLIP_POSITION[0]] = value
        elif rest == names.OPENCLIP_PROJECTION[1]:
            if spec.projection_dim is not None:
                out[names.OPENCLIP_PROJECTION[0]] = value.T
        elif rest.endswith((".attn.in_proj_weight", ".attn.in_proj_bias")):
            layer = names.convert(rest.rsplit(".attn.", 1)[0] + ".x", modules, False)
            if layer is None:
                raise ModelError(
                    f"{path}: tensor {key!r}: layer beyond num_hidden_layers {n}"
                )
            kind = "weight" if rest.endswith("weight") else "bias"
            for name, part in zip("qkv", mx.split(value, 3, axis=0)):
                out[f"{layer[:-2]}.self_attn.{name}_proj.{kind}"] = part
        else:
            new = names.convert(rest, modules, to_original=False)
            if new is None:
                raise ModelError(
                    f"{path}: tensor {key!r} belongs to no module of this text encoder"
                )
            out[new] = value
    return out


def _split(tensors: Dict[str, mx.array], family: Family, path: str):
    parts: Dict[str, Dict[str, mx.array]] = {
        p: {} for p in (names.UNET_PREFIX, names.VAE_PREFIX) + family.text_prefixes
    }
    unknown = []
    for key, value in tensors.items():
        if key in SCHEDULE_BUFFERS or key.startswith(IGNORED_PREFIXES):
            continue
        owner = next((p for p in parts if key.startswith(p)), None)
        if owner is None:
            unknown.append(key)
        else:
            parts[owner][key] = value
    if unknown:
        raise ModelError(
            f"{path}: tensors of no part of an {family.name} model: {sorted(unknown)[:8]}"
        )
    return parts


def build_models(
    sd: ModuleType,
    tensors: Dict[str, mx.array],
    family: Family,
    specs: Specs,
    source: str,
    float16: bool = False,
):
    """(unet, autoencoder, text encoders) of upstream's classes from a checkpoint's tensors."""
    parts = _split(tensors, family, source)
    unet_modules = names.unet_modules(_layout(specs.unet, source))
    unet_t = _convert(parts[names.UNET_PREFIX], names.UNET_PREFIX, unet_modules, source)
    vae = specs.vae
    vae_modules = names.vae_modules(len(vae.block_out_channels), vae.layers_per_block)
    vae_t = _convert(
        parts[names.VAE_PREFIX], names.VAE_PREFIX, vae_modules, source, ".mid.attn_1."
    )
    encoders = []
    for prefix, openclip, spec in zip(
        family.text_prefixes, family.openclip, specs.text
    ):
        part = parts[prefix]
        text_t = (
            _openclip(part, prefix, spec, source)
            if openclip
            else {k[len(prefix) :]: v for k, v in part.items()}
        )
        where = f"{source} [{prefix}*]"
        encoders.append(build_text_encoder(sd, spec, text_t, where, float16))
    unet = build_unet(
        sd, specs.unet, unet_t, f"{source} [{names.UNET_PREFIX}*]", float16
    )
    autoencoder = build_autoencoder(sd, vae, vae_t, f"{source} [{names.VAE_PREFIX}*]")
    return unet, autoencoder, tuple(encoders)


def load_single_file(
    path,
    sd_module: Optional[ModuleType] = None,
    float16: bool = False,
    config=None,
    tokenizer=None,
):
    """A StableDiffusion(XL) object from one original-layout checkpoint, offline."""
    from .folder import upstream_module

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: file not found")
    entries, _ = tensorfile.read_header(path)
    family = recognise((e.name for e in entries), str(path))
    check_latent_input({e.name: e.shape for e in entries}, str(path))
    config = Path(config) if config is not None else None
    if config is not None:
        specs, source = _specs_from_folder(config, family), str(path)
    else:
        specs = _specs_built_in(family, path)
        source = (
            f"{path} (read with the built-in {family.name} config; for another "
            "architecture pass config=FOLDER)"
        )
    folders = tokenizer_folders(
        family, path, Path(tokenizer) if tokenizer else None, config
    )
    sd = upstream_module(sd_module)
    tensors, _ = tensorfile.load(path)
    unet, autoencoder, encoders = build_models(
        sd, tensors, family, specs, source, float16
    )
    tokenizers = tuple(load_tokenizer(sd, f) for f in folders)
    if family.sdxl:
        check_pooled_token(tokenizers[1], str(folders[1]))
    return assemble(
        sd,
        family.sdxl,
        float16,
        specs.scheduler.upstream(sd),
        unet,
        autoencoder,
        encoders,
        tokenizers,
    )
