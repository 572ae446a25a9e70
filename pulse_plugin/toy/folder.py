"""Diffusers-layout model folders: save upstream models into one.

A folder holds ``unet/``, ``text_encoder/``, ``vae/``, ``tokenizer/`` and
``scheduler/`` (plus ``text_encoder_2/`` and ``tokenizer_2/`` for SDXL), each
with diffusers' ``config.json`` and ``.safetensors`` in diffusers key names.
Loading one back (this folder or any other) is :mod:`pulse_plugin.models`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Union

import mlx.core as mx
from mlx.utils import tree_flatten

PathLike = Union[str, Path]
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


# ---------------------------------------------------------------- key mapping
# The inverse of upstream's model_io.map_*_weights: upstream name -> diffusers.

_ATTN = (
    ("query_proj", "to_q"),
    ("key_proj", "to_k"),
    ("value_proj", "to_v"),
    ("out_proj", "to_out.0"),
)
_MID = (
    ("mid_blocks.0", "mid_block.resnets.0"),
    ("mid_blocks.1", "mid_block.attentions.0"),
    ("mid_blocks.2", "mid_block.resnets.1"),
)


def _replace_part(key: str, old: str, new: str) -> str:
    """Replace a dotted name component sequence ``old`` by ``new``."""
    parts = key.split(".")
    olds = old.split(".")
    for i in range(len(parts) - len(olds) + 1):
        if parts[i : i + len(olds)] == olds:
            return ".".join(parts[:i] + new.split(".") + parts[i + len(olds) :])
    return key


def _conv_to_torch(value: mx.array) -> mx.array:
    # upstream/MLX conv weights are (O, H, W, I); diffusers' are (O, I, H, W)
    return value.transpose(0, 3, 1, 2)


def _common_to_diffusers(key: str) -> str:
    key = _replace_part(key, "downsample", "downsamplers.0.conv")
    key = _replace_part(key, "upsample", "upsamplers.0.conv")
    for old, new in _MID:
        key = _replace_part(key, old, new)
    for old, new in _ATTN:
        key = _replace_part(key, old, new)
    return key


def unet_to_diffusers(params: Dict[str, mx.array]) -> Dict[str, mx.array]:
    out: Dict[str, mx.array] = {}
    linear1: Dict[str, mx.array] = {}
    for key, value in params.items():
        parts = key.split(".")
        if "linear1" in parts or "linear2" in parts:
            linear1[key] = value
            continue
        new = _replace_part(_common_to_diffusers(key), "linear3", "ff.net.2")
        if value.ndim == 4:
            value = _conv_to_torch(value)
        elif key.endswith("conv_shortcut.weight"):
            value = value[:, :, None, None]
        out[new] = value
    for key, value in linear1.items():
        if ".linear1." not in "." + key:
            continue
        other = linear1[_replace_part(key, "linear1", "linear2")]
        new = _replace_part(_common_to_diffusers(key), "linear1", "ff.net.0.proj")
        out[new] = mx.concatenate([value, other], axis=0)
    return out


def text_encoder_to_diffusers(params: Dict[str, mx.array]) -> Dict[str, mx.array]:
    out: Dict[str, mx.array] = {}
    for key, value in params.items():
        if key.startswith("text_projection"):
            out[key] = value
            continue
        if key.startswith(("token_embedding", "position_embedding")):
            new = "text_model.embeddings." + key
        elif key.startswith("layers."):
            new = "text_model.encoder." + key
            new = _replace_part(new, "attention", "self_attn")
            new = _replace_part(new, "query_proj", "q_proj")
            new = _replace_part(new, "key_proj", "k_proj")
            new = _replace_part(new, "value_proj", "v_proj")
            new = _replace_part(new, "linear1", "mlp.fc1")
            new = _replace_part(new, "linear2", "mlp.fc2")
        else:
            new = "text_model." + key
        out[new] = value
    return out


def vae_to_diffusers(params: Dict[str, mx.array]) -> Dict[str, mx.array]:
    out: Dict[str, mx.array] = {}
    for key, value in params.items():
        new = _common_to_diffusers(key)
        new = _replace_part(new, "quant_proj", "quant_conv")
        new = _replace_part(new, "post_quant_proj", "post_quant_conv")
        if value.ndim == 4:
            value = _conv_to_torch(value)
        elif key.endswith("conv_shortcut.weight") or key in (
            "quant_proj.weight",
            "post_quant_proj.weight",
        ):
            value = value[:, :, None, None]
        out[new] = value
    return out


# ---------------------------------------------------------------- configs


def unet_config_json(config, sample_size: int) -> dict:
    """diffusers' UNet2DConditionModel config for an upstream UNetConfig."""
    layers = set(config.layers_per_block)
    cross = set(config.cross_attention_dim)
    if len(layers) != 1 or len(cross) != 1:
        raise ValueError("diffusers configs need one layers_per_block and cross dim")
    out = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "sample_size": sample_size,
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": layers.pop(),
        "transformer_layers_per_block": list(config.transformer_layers_per_block),
        # upstream reads this as the number of heads (as SD 2.x configs mean it)
        "attention_head_dim": list(config.num_attention_heads),
        "cross_attention_dim": cross.pop(),
        "norm_num_groups": config.norm_num_groups,
        "down_block_types": list(config.down_block_types),
        # diffusers lists up blocks from the lowest resolution; upstream reverses
        "up_block_types": list(config.up_block_types)[::-1],
        "use_linear_projection": True,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
    }
    if config.addition_embed_type is not None:
        out.update(
            addition_embed_type=config.addition_embed_type,
            addition_time_embed_dim=config.addition_time_embed_dim,
            projection_class_embeddings_input_dim=config.projection_class_embeddings_input_dim,
        )
    return out


def text_encoder_config_json(config, eos: int, bos: int) -> dict:
    projection = config.projection_dim is not None
    return {
        "architectures": [
            "CLIPTextModelWithProjection" if projection else "CLIPTextModel"
        ],
        "model_type": "clip_text_model",
        "num_hidden_layers": config.num_layers,
        "hidden_size": config.model_dims,
        "intermediate_size": 4 * config.model_dims,
        "num_attention_heads": config.num_heads,
        "max_position_embeddings": config.max_length,
        "vocab_size": config.vocab_size,
        "projection_dim": config.projection_dim or config.model_dims,
        "hidden_act": config.hidden_act,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


def vae_config_json(config, sample_size: int) -> dict:
    n = len(config.block_out_channels)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "latent_channels": config.latent_channels_in,
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "norm_num_groups": config.norm_num_groups,
        "scaling_factor": config.scaling_factor,
        "sample_size": sample_size,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "act_fn": "silu",
    }


def scheduler_config_json(config) -> dict:
    return {
        "_class_name": "EulerDiscreteScheduler",
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "beta_schedule": config.beta_schedule,
        "num_train_timesteps": config.num_train_steps,
        "prediction_type": "epsilon",
        # upstream samples t = linspace(T, 0, steps + 1): diffusers' linspace
        # spacing (which ignores steps_offset; 1 is what diffusers asks for)
        "timestep_spacing": "linspace",
        "steps_offset": 1,
    }


# ---------------------------------------------------------------- saving


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_weights(path: Path, weights: Dict[str, mx.array], dtype=mx.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.astype(dtype) for k, v in sorted(weights.items())}
    mx.save_safetensors(str(path), weights, metadata={"format": "pt"})


def tokenizer_config_json(tokenizer, max_length: int) -> dict:
    """transformers' CLIPTokenizer config: upstream's special tokens and padding.

    Upstream pads a batch with id 0, so id 0's token is the pad token (as in
    SD 2.x folders); ``model_max_length`` is the text encoder's position count.
    """
    pad = next(token for token, i in tokenizer.vocab.items() if i == 0)
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": tokenizer.bos,
        "eos_token": tokenizer.eos,
        "unk_token": tokenizer.eos,
        "pad_token": pad,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }


def save_tokenizer(folder: Path, tokenizer, max_length: int = 77) -> None:
    """vocab.json, merges.txt (with the header line upstream skips), tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab, indent=0) + "\n")
    merges = sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])
    lines = ["#version: 0.2"] + [f"{a} {b}" for (a, b), _ in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    _write_json(
        folder / "tokenizer_config.json", tokenizer_config_json(tokenizer, max_length)
    )


def _params(module) -> Dict[str, mx.array]:
    return dict(tree_flatten(module.parameters()))


def save_pipeline(
    pipe,
    folder: PathLike,
    unet_config,
    text_config,
    vae_config,
    sample_size: int = 32,
    dtype=mx.float32,
) -> Path:
    """Write a StableDiffusion object's models as a diffusers-layout folder.

    The configs are the upstream dataclasses the models were built from
    (upstream modules do not keep them); ``sample_size`` is the image size.
    """
    folder = Path(folder)
    latent = sample_size // 2 ** (len(vae_config.block_out_channels) - 1)
    sdxl = hasattr(pipe, "text_encoder_2")
    _write_json(folder / "unet" / "config.json", unet_config_json(unet_config, latent))
    _save_weights(
        folder / "unet" / WEIGHT_NAMES[0], unet_to_diffusers(_params(pipe.unet)), dtype
    )
    encoders = (
        [
            ("text_encoder", pipe.text_encoder_1, pipe.tokenizer_1, text_config[0]),
            ("text_encoder_2", pipe.text_encoder_2, pipe.tokenizer_2, text_config[1]),
        ]
        if sdxl
        else [("text_encoder", pipe.text_encoder, pipe.tokenizer, text_config)]
    )
    for name, encoder, tokenizer, cfg in encoders:
        _write_json(
            folder / name / "config.json",
            text_encoder_config_json(cfg, tokenizer.eos_token, tokenizer.bos_token),
        )
        _save_weights(
            folder / name / WEIGHT_NAMES[1],
            text_encoder_to_diffusers(_params(encoder)),
            dtype,
        )
        save_tokenizer(
            folder / name.replace("text_encoder", "tokenizer"),
            tokenizer,
            cfg.max_length,
        )
    _write_json(
        folder / "vae" / "config.json", vae_config_json(vae_config, sample_size)
    )
    _save_weights(
        folder / "vae" / WEIGHT_NAMES[0],
        vae_to_diffusers(_params(pipe.autoencoder)),
        mx.float32,
    )
    _write_json(
        folder / "scheduler" / "scheduler_config.json",
        scheduler_config_json(pipe.diffusion_config),
    )
    index = {
        "_class_name": (
            "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
        ),
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }
    if not sdxl:
        # what diffusers writes for a pipeline saved without a safety checker
        index.update(
            safety_checker=[None, None],
            feature_extractor=[None, None],
            requires_safety_checker=False,
        )
    for name, *_ in encoders:
        index[name] = ["transformers", "CLIPTextModel"]
        index[name.replace("text_encoder", "tokenizer")] = [
            "transformers",
            "CLIPTokenizer",
        ]
    _write_json(folder / "model_index.json", index)
    return folder
