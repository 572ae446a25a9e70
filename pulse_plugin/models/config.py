"""Diffusers/transformers ``config.json`` files, parsed and checked against what upstream honours.

Upstream's classes implement one fixed Stable Diffusion computation; a config
value they cannot honour would load into a different model than the one the
files describe. Every such value is refused here with an error naming the file,
the field, the value and what upstream supports. This module is the one place
configs are read: each ``*Spec.from_file`` returns a typed, validated spec that
builds upstream's config dataclass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional, Tuple, Union

PathLike = Union[str, Path]
_MISSING = object()


class ModelError(ValueError):
    """A model file or folder that cannot be loaded as the model it describes."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A file or folder a model needs is not there."""


def read_json(path: PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


class _Fields:
    """Typed access to one config's fields, with errors naming the file and field."""

    def __init__(self, data: Dict[str, Any], path: PathLike):
        self.data, self.path = data, Path(path)

    def error(self, field: str, value: Any, supported: str) -> ModelError:
        return ModelError(
            f"{self.path}: {field} = {json.dumps(value)} cannot be honoured by "
            f"upstream's classes (supported: {supported})"
        )

    def get(self, field: str, kind: type = object, default: Any = _MISSING) -> Any:
        if field not in self.data:
            if default is _MISSING:
                raise ModelError(f"{self.path}: required field {field!r} is missing")
            return default
        value = self.data[field]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not object and (
            not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        ):
            raise ModelError(
                f"{self.path}: field {field!r} = {json.dumps(value)}: expected {kind.__name__}"
            )
        return value

    def ints(self, field: str, n: int, default: Any = _MISSING) -> Tuple[int, ...]:
        """An int or a list of n ints, as a tuple of n ints."""
        value = self.get(field, object, default)
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,) * n
        if (
            isinstance(value, (list, tuple))
            and len(value) == n
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            return tuple(value)
        raise ModelError(
            f"{self.path}: field {field!r} = {json.dumps(value)}: expected an int "
            f"or a list of {n} ints"
        )

    def fixed(self, field: str, supported: Tuple[Any, ...]) -> None:
        """Refuse any value but the supported ones (an absent field takes diffusers' default)."""
        if field in self.data and not _in(self.data[field], supported):
            raise self.error(
                field, self.data[field], " or ".join(json.dumps(s) for s in supported)
            )


def _in(value: Any, supported: Tuple[Any, ...]) -> bool:
    for s in supported:
        if isinstance(s, float) and isinstance(value, (int, float)):
            if not isinstance(value, bool) and abs(value - s) <= 1e-12:
                return True
        elif value == s and type(value) is type(s):
            return True
    return False


# ------------------------------------------------------------------ UNet
# Fields that change the computation, and the only value(s) upstream's UNet implements.
UNET_FIXED: Dict[str, Tuple[Any, ...]] = {
    "act_fn": ("silu",),
    "attention_type": ("default",),
    "center_input_sample": (False,),
    "class_embed_type": (None,),
    "class_embeddings_concat": (False,),
    "cross_attention_norm": (None,),
    "dual_cross_attention": (False,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "flip_sin_to_cos": (True,),
    "freq_shift": (0,),
    "mid_block_only_cross_attention": (None, False),
    "mid_block_scale_factor": (1.0,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "norm_eps": (1e-5,),
    "num_attention_heads": (None,),
    "num_class_embeds": (None,),
    "only_cross_attention": (False,),
    "resnet_out_scale_factor": (1.0,),
    "resnet_skip_time_act": (False,),
    "resnet_time_scale_shift": ("default",),
    "reverse_transformer_layers_per_block": (None,),
    "time_cond_proj_dim": (None,),
    "time_embedding_act_fn": (None,),
    "time_embedding_dim": (None,),
    "time_embedding_type": ("positional",),
    "timestep_post_act": (None,),
    "addition_embed_type": (None, "text_time"),
}
DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
TRANSFORMER_GROUPS = 32  # upstream's Transformer2D always normalises with 32 groups


@dataclass(frozen=True)
class UNetSpec:
    in_channels: int
    out_channels: int
    block_out_channels: Tuple[int, ...]
    layers_per_block: Tuple[int, ...]
    transformer_layers_per_block: Tuple[int, ...]
    heads: Tuple[int, ...]
    cross_attention_dim: Tuple[int, ...]
    down_block_types: Tuple[str, ...]
    up_block_types: Tuple[str, ...]  # diffusers' order (lowest resolution first)
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    upcast_attention: bool = False
    addition_embed_type: Optional[str] = None
    addition_time_embed_dim: Optional[int] = None
    projection_class_embeddings_input_dim: Optional[int] = None

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: PathLike) -> "UNetSpec":
        f = _Fields(data, path)
        for field, supported in UNET_FIXED.items():
            if field == "only_cross_attention" and isinstance(data.get(field), list):
                if any(data[field]):
                    raise f.error(field, data[field], "false for every block")
                continue
            f.fixed(field, supported)
        channels = f.get("block_out_channels", list)
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise f.error("block_out_channels", channels, "a list of positive ints")
        n = len(channels)
        groups = f.get("norm_num_groups", int, 32)
        if groups != TRANSFORMER_GROUPS:
            raise f.error(
                "norm_num_groups",
                groups,
                f"{TRANSFORMER_GROUPS}: upstream's Transformer2D always uses "
                f"{TRANSFORMER_GROUPS} GroupNorm groups, and every UNet has one in its "
                "mid block",
            )
        for c in channels:
            if c % groups:
                raise f.error(
                    "block_out_channels",
                    channels,
                    f"multiples of norm_num_groups {groups}",
                )
        down = tuple(f.get("down_block_types", list))
        up = tuple(f.get("up_block_types", list))
        for field, types, known in (
            ("down_block_types", down, DOWN_TYPES),
            ("up_block_types", up, UP_TYPES),
        ):
            if len(types) != n or any(t not in known for t in types):
                raise f.error(field, list(types), f"{n} of {', '.join(known)}")
        tlpb = f.get("transformer_layers_per_block", object, 1)
        if isinstance(tlpb, list) and any(isinstance(t, list) for t in tlpb):
            raise f.error(
                "transformer_layers_per_block", tlpb, "an int or one int per block"
            )
        heads = f.ints("attention_head_dim", n)
        for c, h in zip(channels, heads):
            if h <= 0 or c % h:
                raise f.error(
                    "attention_head_dim",
                    data["attention_head_dim"],
                    "heads that divide each block's channels",
                )
        addition = f.get("addition_embed_type", object, None)
        spec = cls(
            in_channels=f.get("in_channels", int),
            out_channels=f.get("out_channels", int),
            block_out_channels=tuple(channels),
            layers_per_block=f.ints("layers_per_block", n),
            transformer_layers_per_block=f.ints("transformer_layers_per_block", n, 1),
            heads=heads,
            cross_attention_dim=f.ints("cross_attention_dim", n),
            down_block_types=down,
            up_block_types=up,
            conv_in_kernel=f.get("conv_in_kernel", int, 3),
            conv_out_kernel=f.get("conv_out_kernel", int, 3),
            upcast_attention=bool(f.get("upcast_attention", object, False)),
            addition_embed_type=addition,
            addition_time_embed_dim=(
                f.get("addition_time_embed_dim", int) if addition else None
            ),
            projection_class_embeddings_input_dim=(
                f.get("projection_class_embeddings_input_dim", int)
                if addition
                else None
            ),
        )
        if spec.in_channels != spec.out_channels:
            raise f.error(
                "in_channels",
                spec.in_channels,
                f"in_channels = out_channels ({spec.out_channels}): upstream's sampler "
                "feeds the UNet only the latent (inpainting/depth models need more)",
            )
        for k in (spec.conv_in_kernel, spec.conv_out_kernel):
            if k % 2 == 0:
                raise f.error("conv_in_kernel/conv_out_kernel", k, "odd kernel sizes")
        return spec

    @classmethod
    def from_file(cls, path: PathLike) -> "UNetSpec":
        return cls.from_dict(read_json(path), path)

    def check_dtype(self, float16: bool, path: PathLike) -> None:
        if float16 and self.upcast_attention:
            raise ModelError(
                f"{path}: upcast_attention = true asks for attention in float32, "
                "upstream computes it in the model's dtype: load this model in float32"
            )

    def upstream(self, sd: ModuleType):
        return sd.config.UNetConfig(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            conv_in_kernel=self.conv_in_kernel,
            conv_out_kernel=self.conv_out_kernel,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            transformer_layers_per_block=self.transformer_layers_per_block,
            num_attention_heads=self.heads,
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=TRANSFORMER_GROUPS,
            down_block_types=self.down_block_types,
            up_block_types=self.up_block_types[::-1],  # upstream lists them top-down
            addition_embed_type=self.addition_embed_type,
            addition_time_embed_dim=self.addition_time_embed_dim,
            projection_class_embeddings_input_dim=self.projection_class_embeddings_input_dim,
        )


# ------------------------------------------------------------------ text encoder
TEXT_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection")
TEXT_ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class TextEncoderSpec:
    num_layers: int
    model_dims: int
    num_heads: int
    max_length: int
    vocab_size: int
    projection_dim: Optional[int]
    hidden_act: str

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: PathLike) -> "TextEncoderSpec":
        f = _Fields(data, path)
        archs = f.get("architectures", list)
        if len(archs) != 1 or archs[0] not in TEXT_ARCHITECTURES:
            raise f.error("architectures", archs, " or ".join(TEXT_ARCHITECTURES))
        f.fixed("model_type", ("clip_text_model",))
        f.fixed("layer_norm_eps", (1e-5,))
        act = f.get("hidden_act", str, "quick_gelu")
        if act not in TEXT_ACTIVATIONS:
            raise f.error("hidden_act", act, " or ".join(TEXT_ACTIVATIONS))
        dims = f.get("hidden_size", int)
        inner = f.get("intermediate_size", int, 4 * dims)
        if inner != 4 * dims:
            raise f.error("intermediate_size", inner, f"4 x hidden_size = {4 * dims}")
        heads = f.get("num_attention_heads", int)
        if heads <= 0 or dims % heads:
            raise f.error(
                "num_attention_heads", heads, f"a divisor of hidden_size {dims}"
            )
        projection = archs[0] == "CLIPTextModelWithProjection"
        return cls(
            num_layers=f.get("num_hidden_layers", int),
            model_dims=dims,
            num_heads=heads,
            max_length=f.get("max_position_embeddings", int),
            vocab_size=f.get("vocab_size", int),
            projection_dim=f.get("projection_dim", int) if projection else None,
            hidden_act=act,
        )

    @classmethod
    def from_file(cls, path: PathLike) -> "TextEncoderSpec":
        return cls.from_dict(read_json(path), path)

    def upstream(self, sd: ModuleType):
        return sd.config.CLIPTextModelConfig(
            num_layers=self.num_layers,
            model_dims=self.model_dims,
            num_heads=self.num_heads,
            max_length=self.max_length,
            vocab_size=self.vocab_size,
            projection_dim=self.projection_dim,
            hidden_act=self.hidden_act,
        )


# ------------------------------------------------------------------ autoencoder
VAE_FIXED: Dict[str, Tuple[Any, ...]] = {
    "_class_name": ("AutoencoderKL",),
    "act_fn": ("silu",),
    "mid_block_add_attention": (True,),
    "use_quant_conv": (True,),
    "use_post_quant_conv": (True,),
    "shift_factor": (None, 0.0),
    "latents_mean": (None,),
    "latents_std": (None,),
}


@dataclass(frozen=True)
class AutoencoderSpec:
    in_channels: int
    out_channels: int
    latent_channels: int
    block_out_channels: Tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    scaling_factor: float
    sample_size: Optional[int] = None

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: PathLike) -> "AutoencoderSpec":
        f = _Fields(data, path)
        for field, supported in VAE_FIXED.items():
            f.fixed(field, supported)
        channels = f.get("block_out_channels", list)
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise f.error("block_out_channels", channels, "a list of positive ints")
        n = len(channels)
        for field, kind in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            types = f.get(field, list, [kind] * n)
            if types != [kind] * n:
                raise f.error(field, types, f"{n} x {kind}")
        groups = f.get("norm_num_groups", int, 32)
        if any(c % groups for c in channels):
            raise f.error(
                "norm_num_groups",
                groups,
                f"a divisor of every block's channels {channels}",
            )
        sample = f.get("sample_size", object, None)
        if isinstance(sample, list):
            sample = sample[0] if len(set(sample)) == 1 else None
        return cls(
            in_channels=f.get("in_channels", int),
            out_channels=f.get("out_channels", int),
            latent_channels=f.get("latent_channels", int),
            block_out_channels=tuple(channels),
            layers_per_block=f.get("layers_per_block", int),
            norm_num_groups=groups,
            scaling_factor=f.get("scaling_factor", float, 0.18215),
            sample_size=sample,
        )

    @classmethod
    def from_file(cls, path: PathLike) -> "AutoencoderSpec":
        return cls.from_dict(read_json(path), path)

    def upstream(self, sd: ModuleType):
        return sd.config.AutoencoderConfig(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            latent_channels_out=2 * self.latent_channels,
            latent_channels_in=self.latent_channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            scaling_factor=self.scaling_factor,
        )


# ------------------------------------------------------------------ scheduler
SCHEDULER_FIXED: Dict[str, Tuple[Any, ...]] = {
    "prediction_type": ("epsilon",),
    "beta_schedule": ("linear", "scaled_linear"),
    "trained_betas": (None,),
    "rescale_betas_zero_snr": (False,),
}


@dataclass(frozen=True)
class SchedulerSpec:
    beta_start: float
    beta_end: float
    beta_schedule: str
    num_train_timesteps: int

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: PathLike) -> "SchedulerSpec":
        f = _Fields(data, path)
        for field, supported in SCHEDULER_FIXED.items():
            if field == "prediction_type" and data.get(field, "epsilon") != "epsilon":
                raise f.error(
                    field, data[field], '"epsilon" (upstream\'s sampler needs epsilon)'
                )
            f.fixed(field, supported)
        return cls(
            beta_start=f.get("beta_start", float),
            beta_end=f.get("beta_end", float),
            beta_schedule=f.get("beta_schedule", str),
            num_train_timesteps=f.get("num_train_timesteps", int),
        )

    @classmethod
    def from_file(cls, path: PathLike) -> "SchedulerSpec":
        return cls.from_dict(read_json(path), path)

    def upstream(self, sd: ModuleType):
        return sd.config.DiffusionConfig(
            beta_schedule=self.beta_schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            num_train_steps=self.num_train_timesteps,
        )


# ------------------------------------------------------------------ a whole model
@dataclass(frozen=True)
class Specs:
    """The parts' specs of one model (one text encoder, or two for SDXL)."""

    unet: UNetSpec
    text: Tuple[TextEncoderSpec, ...]
    vae: AutoencoderSpec
    scheduler: SchedulerSpec

    @property
    def sdxl(self) -> bool:
        return len(self.text) == 2

    def check(self, where: PathLike) -> "Specs":
        """Refuse parts that do not fit together (upstream would fail or ignore an input)."""
        unet = self.unet
        if self.sdxl != (unet.addition_embed_type == "text_time"):
            raise ModelError(
                f"{where}: unet addition_embed_type = {json.dumps(unet.addition_embed_type)} "
                f"with {len(self.text)} text encoder(s); upstream's SDXL pipeline needs "
                '"text_time" and two text encoders, SD 1.x/2.x neither'
            )
        context = (
            sum(t.model_dims for t in self.text)
            if self.sdxl
            else self.text[0].model_dims
        )
        if any(c != context for c in unet.cross_attention_dim):
            raise ModelError(
                f"{where}: unet cross_attention_dim = {list(unet.cross_attention_dim)}, but the "
                f"text encoder(s) give {context}-wide states"
            )
        if self.sdxl:
            pooled = self.text[1].projection_dim
            needed = (
                unet.projection_class_embeddings_input_dim
                - 6 * unet.addition_time_embed_dim
            )
            if pooled != needed:
                raise ModelError(
                    f"{where}: unet projection_class_embeddings_input_dim = "
                    f"{unet.projection_class_embeddings_input_dim} needs a {needed}-wide pooled "
                    f"text embedding, text_encoder_2 gives {pooled}"
                )
        if unet.in_channels != self.vae.latent_channels:
            raise ModelError(
                f"{where}: unet in_channels = {unet.in_channels}, vae latent_channels = "
                f"{self.vae.latent_channels}: they must be equal"
            )
        return self
