"""Original LDM/SGM checkpoint names <-> diffusers names (pure Python, no MLX).

A1111 and ComfyUI keep models as one ``.safetensors`` in the layout of the
original code: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*``
(VAE), ``cond_stage_model.transformer.*`` (SD 1.x, Hugging Face CLIP names),
``cond_stage_model.model.*`` (SD 2.x, OpenCLIP names with fused q/k/v) and, for
SDXL, ``conditioner.embedders.0.transformer.*`` / ``conditioner.embedders.1.model.*``.
Each table is a list of modules (diffusers prefix, original prefix, kind); the
kind says how the names inside the module differ. One table converts both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

Module = Tuple[str, str, str]  # (diffusers prefix, original prefix, kind)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIXES = (
    "conditioner.embedders.0.transformer.",
    "conditioner.embedders.1.model.",
)

# names inside a module, per kind: (diffusers, original)
INNER: Dict[str, List[Tuple[str, str]]] = {
    "plain": [],
    "unet_resnet": [
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("conv_shortcut", "skip_connection"),
    ],
    "vae_resnet": [("conv_shortcut", "nin_shortcut")],
    "vae_attention": [
        ("group_norm", "norm"),
        ("to_q", "q"),
        ("to_k", "k"),
        ("to_v", "v"),
        ("to_out.0", "proj_out"),
    ],
    "openclip_layer": [
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("self_attn.out_proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ],
}


@dataclass(frozen=True)
class UNetLayout:
    """What the original numbering depends on."""

    levels: int
    layers_per_block: int
    down_attention: Tuple[bool, ...]  # per down level, diffusers order
    up_attention: Tuple[
        bool, ...
    ]  # per up level, diffusers order (lowest resolution first)
    text_time: bool = False


def unet_modules(layout: UNetLayout) -> List[Module]:
    n, per = layout.levels, layout.layers_per_block
    out: List[Module] = [
        ("time_embedding.linear_1", "time_embed.0", "plain"),
        ("time_embedding.linear_2", "time_embed.2", "plain"),
        ("conv_in", "input_blocks.0.0", "plain"),
        ("conv_norm_out", "out.0", "plain"),
        ("conv_out", "out.2", "plain"),
        ("mid_block.resnets.0", "middle_block.0", "unet_resnet"),
        ("mid_block.attentions.0", "middle_block.1", "plain"),
        ("mid_block.resnets.1", "middle_block.2", "unet_resnet"),
    ]
    if layout.text_time:
        out += [
            ("add_embedding.linear_1", "label_emb.0.0", "plain"),
            ("add_embedding.linear_2", "label_emb.0.2", "plain"),
        ]
    for b in range(n):
        first = 1 + b * (per + 1)
        for j in range(per):
            out.append(
                (
                    f"down_blocks.{b}.resnets.{j}",
                    f"input_blocks.{first + j}.0",
                    "unet_resnet",
                )
            )
            if layout.down_attention[b]:
                out.append(
                    (
                        f"down_blocks.{b}.attentions.{j}",
                        f"input_blocks.{first + j}.1",
                        "plain",
                    )
                )
        if b < n - 1:
            out.append(
                (
                    f"down_blocks.{b}.downsamplers.0.conv",
                    f"input_blocks.{first + per}.0.op",
                    "plain",
                )
            )
    for u in range(n):
        first = u * (per + 1)
        for j in range(per + 1):
            out.append(
                (
                    f"up_blocks.{u}.resnets.{j}",
                    f"output_blocks.{first + j}.0",
                    "unet_resnet",
                )
            )
            if layout.up_attention[u]:
                out.append(
                    (
                        f"up_blocks.{u}.attentions.{j}",
                        f"output_blocks.{first + j}.1",
                        "plain",
                    )
                )
        if u < n - 1:
            slot = 2 if layout.up_attention[u] else 1
            out.append(
                (
                    f"up_blocks.{u}.upsamplers.0.conv",
                    f"output_blocks.{first + per}.{slot}.conv",
                    "plain",
                )
            )
    return out


def vae_modules(levels: int, layers_per_block: int) -> List[Module]:
    out: List[Module] = [
        ("quant_conv", "quant_conv", "plain"),
        ("post_quant_conv", "post_quant_conv", "plain"),
    ]
    for side in ("encoder", "decoder"):
        out += [
            (f"{side}.conv_in", f"{side}.conv_in", "plain"),
            (f"{side}.conv_out", f"{side}.conv_out", "plain"),
            (f"{side}.conv_norm_out", f"{side}.norm_out", "plain"),
            (f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", "vae_resnet"),
            (f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", "vae_resnet"),
            (f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", "vae_attention"),
        ]
    for i in range(levels):
        for j in range(layers_per_block):
            out.append(
                (
                    f"encoder.down_blocks.{i}.resnets.{j}",
                    f"encoder.down.{i}.block.{j}",
                    "vae_resnet",
                )
            )
        if i < levels - 1:
            out.append(
                (
                    f"encoder.down_blocks.{i}.downsamplers.0.conv",
                    f"encoder.down.{i}.downsample.conv",
                    "plain",
                )
            )
        top = levels - 1 - i  # the original decoder numbers its levels from the top
        for j in range(layers_per_block + 1):
            out.append(
                (
                    f"decoder.up_blocks.{i}.resnets.{j}",
                    f"decoder.up.{top}.block.{j}",
                    "vae_resnet",
                )
            )
        if i < levels - 1:
            out.append(
                (
                    f"decoder.up_blocks.{i}.upsamplers.0.conv",
                    f"decoder.up.{top}.upsample.conv",
                    "plain",
                )
            )
    return out


def openclip_modules(layers: int) -> List[Module]:
    """OpenCLIP text tower names; q/k/v are fused (see :func:`fused_qkv`)."""
    out: List[Module] = [
        ("text_model.embeddings.token_embedding", "token_embedding", "plain"),
        ("text_model.final_layer_norm", "ln_final", "plain"),
    ]
    for i in range(layers):
        out.append(
            (
                f"text_model.encoder.layers.{i}",
                f"transformer.resblocks.{i}",
                "openclip_layer",
            )
        )
    return out


# Tensors (not modules) whose names differ in OpenCLIP: diffusers -> OpenCLIP.
OPENCLIP_POSITION = (
    "text_model.embeddings.position_embedding.weight",
    "positional_embedding",
)
OPENCLIP_PROJECTION = ("text_projection.weight", "text_projection")  # transposed


def _inner(rest: str, kind: str, to_original: bool) -> str:
    for diffusers, original in INNER[kind]:
        src, dst = (diffusers, original) if to_original else (original, diffusers)
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src) :]
    return rest


def convert(key: str, modules: List[Module], to_original: bool) -> Optional[str]:
    """``key`` in the other layout, or None when no module of the table holds it."""
    side = 0 if to_original else 1
    best: Optional[Module] = None
    for module in modules:
        prefix = module[side]
        if key.startswith(prefix + ".") and (
            best is None or len(prefix) > len(best[side])
        ):
            best = module
    if best is None:
        return None
    rest = key[len(best[side]) + 1 :]
    return best[1 - side] + "." + _inner(rest, best[2], to_original)
