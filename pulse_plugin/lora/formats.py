"""LoRA key names: kohya, diffusers and PEFT names to upstream MLX module paths.

Pure string functions. A parsed key is ``(component, diffusers_module, role)``
with component ``unet``, ``te1`` (the first / only text encoder) or ``te2``
(SDXL's second), and role ``down`` (A), ``up`` (B) or ``alpha``. Module names
are mapped to upstream's MLX paths with the same renames upstream's
``map_unet_weights`` / ``map_clip_text_encoder_weights`` apply to full weights.

kohya names for SDXL follow the original (SGM / LDM) UNet: ``input_blocks``,
``middle_block`` and ``output_blocks`` numbered layer by layer. They are turned
into diffusers names with the tables below and the UNet's layers per block.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

COMPONENTS = ("unet", "te1", "te2")

# kohya prefixes (SD 1/2 use lora_te, SDXL lora_te1 / lora_te2)
KOHYA_PREFIXES = {
    "lora_unet": "unet",
    "lora_te": "te1",
    "lora_te1": "te1",
    "lora_te2": "te2",
}
DIFFUSERS_PREFIXES = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}

# Words of diffusers module names that contain an underscore; kohya names
# replace every "." by "_", so these are re-joined when parsing.
COMPOUND_WORDS = (
    "down_blocks",
    "up_blocks",
    "mid_block",
    "transformer_blocks",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "proj_in",
    "proj_out",
    "conv_shortcut",
    "time_emb_proj",
    "conv_in",
    "conv_out",
    "time_embedding",
    "linear_1",
    "linear_2",
    "add_embedding",
    "text_model",
    "self_attn",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "text_projection",
)
_COMPOUNDS = sorted(
    (tuple(w.split("_")) for w in COMPOUND_WORDS), key=len, reverse=True
)

_KOHYA_RE = re.compile(
    r"^(lora_unet|lora_te1|lora_te2|lora_te)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha"
    r"|hada_w[12]_[ab]|lokr_w[12]|lokr_w[12]_[ab])$"
)
_DIFFUSERS_RE = re.compile(
    r"^(unet|text_encoder_2|text_encoder)\.(.+?)\."
    r"(lora_A\.weight|lora_B\.weight|lora_A\.default\.weight|lora_B\.default\.weight"
    r"|lora\.down\.weight|lora\.up\.weight"
    r"|lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight|alpha)$"
)
# Top-level CLIP module names (transformers 5's CLIPTextModel drops "text_model.");
# no UNet module starts with these.
CLIP_ROOTS = (
    "text_model.",
    "encoder.",
    "embeddings.",
    "final_layer_norm",
    "text_projection",
)
# PEFT's save_pretrained: base_model.model.<module>.lora_A.weight
_PEFT_RE = re.compile(
    r"^base_model\.model\.(.+?)\.(lora_A\.weight|lora_B\.weight"
    r"|lora_A\.default\.weight|lora_B\.default\.weight)$"
)
# diffusers' older attention-processor format: ...attn1.processor.to_q_lora.down.weight
_PROCESSOR_RE = re.compile(
    r"^(?:(unet)\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$"
)
_ROLES = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_A.weight": "down",
    "lora_B.weight": "up",
    "lora_A.default.weight": "down",
    "lora_B.default.weight": "up",
    "lora.down.weight": "down",
    "lora.up.weight": "up",
    "lora_linear_layer.down.weight": "down",
    "lora_linear_layer.up.weight": "up",
    "alpha": "alpha",
    # LyCORIS LoHa / LoKr (kohya names): kept by their own names
    **{
        f"{kind}_w{i}{part}": f"{kind}_w{i}{part}"
        for kind, parts in (("hada", ("_a", "_b")), ("lokr", ("", "_a", "_b")))
        for i in (1, 2)
        for part in parts
    },
}


class LoRAFormatError(ValueError):
    """A LoRA key or tensor does not fit any supported format."""


# ---------------------------------------------------------------- other formats
# Key endings of adapter formats that are not read (checked on keys that parse as
# nothing else): refused by name, since skipping their keys would load a different
# adapter than the file holds.
UNSUPPORTED_FORMATS = {
    "LyCORIS LoHa with Tucker factors": "hada_t1 hada_t2",
    "LyCORIS LoKr with a Tucker factor": "lokr_t2",
    "LyCORIS LoHa outside kohya naming": "hada_w1_a hada_w1_b hada_w2_a hada_w2_b",
    "LyCORIS LoKr outside kohya naming": "lokr_w1 lokr_w2 lokr_w1_a lokr_w1_b "
    "lokr_w2_a lokr_w2_b",
    "LyCORIS (IA)^3": "on_input",
    "LyCORIS full weight difference": "diff diff_b",
    "LyCORIS LoCon with a Tucker mid tensor": "lora_mid.weight",
    "LyCORIS OFT / BOFT": "oft_blocks oft_diag",
    "LyCORIS GLoRA": "a1.weight a2.weight b1.weight b2.weight",
    "DoRA (weight-decomposed LoRA)": "dora_scale lora_magnitude_vector "
    "lora_magnitude_vector.weight lora_magnitude_vector.default.weight",
}


def unsupported_format(key: str) -> Optional[str]:
    """The name of the non-LoRA adapter format ``key`` belongs to, or None."""
    for name, endings in UNSUPPORTED_FORMATS.items():
        if key.endswith(tuple("." + e for e in endings.split())):
            return name
    return None


# ---------------------------------------------------------------- kohya SGM (SDXL)
SGM_FIXED = {
    "input_blocks_0_0": "conv_in",
    "out_2": "conv_out",
    "time_embed_0": "time_embedding.linear_1",
    "time_embed_2": "time_embedding.linear_2",
    "label_emb_0_0": "add_embedding.linear_1",
    "label_emb_0_2": "add_embedding.linear_2",
}
# Layers inside an SGM ResBlock -> diffusers ResnetBlock2D.
SGM_RESNET = {
    "in_layers_2": "conv1",
    "out_layers_3": "conv2",
    "emb_layers_1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}
# middle_block.N -> diffusers mid_block part
SGM_MIDDLE = {
    0: "mid_block.resnets.0",
    1: "mid_block.attentions.0",
    2: "mid_block.resnets.1",
}
_SGM_RE = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$")
_SGM_MID_RE = re.compile(r"^middle_block_(\d+)_(.+)$")
SGM_LAYERS_PER_BLOCK = 2  # SD 1.x, 2.x and SDXL all have two ResBlocks per down level


def is_sgm(name: str) -> bool:
    """True for a kohya UNet module name in the SGM / LDM layout."""
    return name in SGM_FIXED or name.startswith(
        ("input_blocks_", "middle_block_", "output_blocks_")
    )


def _sgm_resnet(name: str, rest: str, prefix: str) -> str:
    if rest not in SGM_RESNET:
        raise LoRAFormatError(
            f"lora_unet_{name}: {rest!r} is not a ResBlock layer ({sorted(SGM_RESNET)})"
        )
    return f"{prefix}.{SGM_RESNET[rest]}"


def _sgm_attention(name: str, rest: str, prefix: str) -> str:
    if not rest.startswith(("transformer_blocks_", "proj_in", "proj_out")):
        raise LoRAFormatError(f"lora_unet_{name}: {rest!r} is not an attention layer")
    return f"{prefix}.{kohya_to_dotted(rest)}"


def sgm_to_diffusers(name: str, layers_per_block: int = SGM_LAYERS_PER_BLOCK) -> str:
    """Diffusers UNet module name of a kohya SGM module name (without ``lora_unet_``)."""
    if name in SGM_FIXED:
        return SGM_FIXED[name]
    per_level = layers_per_block + 1
    m = _SGM_MID_RE.match(name)
    if m:
        index, rest = int(m.group(1)), m.group(2)
        if index not in SGM_MIDDLE:
            raise LoRAFormatError(f"lora_unet_{name}: middle_block has layers 0-2")
        part = SGM_MIDDLE[index]
        if index == 1:
            return _sgm_attention(name, rest, part)
        return _sgm_resnet(name, rest, part)
    m = _SGM_RE.match(name)
    if not m:
        raise LoRAFormatError(f"lora_unet_{name}: not an SGM UNet layer name")
    kind, index, inner, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if kind == "input_blocks":
        if index == 0:
            raise LoRAFormatError(f"lora_unet_{name}: input_blocks.0 is conv_in only")
        level, layer = divmod(index - 1, per_level)
        block = f"down_blocks.{level}"
        if layer == layers_per_block:  # the level's downsampler
            if (inner, rest) != (0, "op"):
                raise LoRAFormatError(
                    f"lora_unet_{name}: expected the downsampler 'op'"
                )
            return f"{block}.downsamplers.0.conv"
    else:
        level, layer = divmod(index, per_level)
        block = f"up_blocks.{level}"
        if rest == "conv" and inner in (1, 2) and layer == layers_per_block:
            return f"{block}.upsamplers.0.conv"
    if inner == 0:
        return _sgm_resnet(name, rest, f"{block}.resnets.{layer}")
    if inner == 1:
        return _sgm_attention(name, rest, f"{block}.attentions.{layer}")
    raise LoRAFormatError(f"lora_unet_{name}: unexpected layer part {inner}")


def kohya_to_dotted(name: str) -> str:
    """Turn a kohya module name (dots replaced by '_') back into a dotted diffusers name."""
    parts = name.split("_")
    out: List[str] = []
    i = 0
    while i < len(parts):
        for words in _COMPOUNDS:
            if tuple(parts[i : i + len(words)]) == words:
                out.append("_".join(words))
                i += len(words)
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def parse_key(
    key: str,
    layers_per_block: int = SGM_LAYERS_PER_BLOCK,
    peft_component: Optional[str] = None,
) -> Optional[Tuple[str, str, str, str]]:
    """``(component, diffusers_module, role, format)`` for a LoRA key, or None if unknown.

    ``format`` is ``kohya``, ``kohya-sgm``, ``diffusers`` or ``peft``. PEFT keys
    (``base_model.model.*``) do not say which model they belong to: a text-model
    name is ``te1`` unless ``peft_component`` says otherwise, anything else ``unet``.
    Raises LoRAFormatError for an SGM name that has no diffusers counterpart.
    """
    m = _KOHYA_RE.match(key)
    if m:
        prefix, name, role = m.groups()
        component = KOHYA_PREFIXES[prefix]
        if component == "unet" and is_sgm(name):
            try:
                module = sgm_to_diffusers(name, layers_per_block)
            except LoRAFormatError as exc:
                raise LoRAFormatError(
                    f"{exc} (SGM names read for layers_per_block={layers_per_block}; "
                    "pass the UNet's if it has another)"
                ) from None
            return component, module, _ROLES[role], "kohya-sgm"
        return component, kohya_to_dotted(name), _ROLES[role], "kohya"
    m = _PROCESSOR_RE.match(key)
    if m:
        _, base, proj, role = m.groups()
        module = f"{base}.{proj}" + (".0" if proj == "to_out" else "")
        return "unet", module, role, "diffusers"
    m = _PEFT_RE.match(key)
    if m:
        name, role = m.groups()
        component = peft_component or ("te1" if name.startswith(CLIP_ROOTS) else "unet")
        return component, name, _ROLES[role], "peft"
    m = _DIFFUSERS_RE.match(key)
    if m:
        prefix, name, role = m.groups()
        return DIFFUSERS_PREFIXES[prefix], name, _ROLES[role], "diffusers"
    return None


def _replace_words(name: str, table: Tuple[Tuple[str, str], ...]) -> str:
    """Replace whole dotted sub-sequences of ``name`` (never parts of words)."""
    padded = f".{name}."
    for old, new in table:
        padded = padded.replace(f".{old}.", f".{new}.")
    return padded[1:-1]


_UNET_RENAMES = (
    ("downsamplers.0.conv", "downsample"),
    ("upsamplers.0.conv", "upsample"),
    ("mid_block.resnets.0", "mid_blocks.0"),
    ("mid_block.attentions.0", "mid_blocks.1"),
    ("mid_block.resnets.1", "mid_blocks.2"),
    ("to_k", "key_proj"),
    ("to_out.0", "out_proj"),
    ("to_q", "query_proj"),
    ("to_v", "value_proj"),
    ("ff.net.2", "linear3"),
)
_CLIP_RENAMES = (
    ("self_attn", "attention"),
    ("q_proj", "query_proj"),
    ("k_proj", "key_proj"),
    ("v_proj", "value_proj"),
    ("mlp.fc1", "linear1"),
    ("mlp.fc2", "linear2"),
)


def unet_targets(module: str) -> List[Tuple[str, Optional[int]]]:
    """MLX paths for a diffusers UNet module: ``[(path, None)]``, or two halves for ``ff.net.0.proj``."""
    if module.endswith("ff.net.0.proj"):
        base = _replace_words(module[: -len("ff.net.0.proj")] + "X", _UNET_RENAMES)[:-1]
        return [(base + "linear1", 0), (base + "linear2", 1)]
    return [(_replace_words(module, _UNET_RENAMES), None)]


def clip_target(module: str) -> str:
    """MLX path for a diffusers / transformers CLIP text-encoder module."""
    for prefix in ("text_model.", "embeddings.", "encoder."):
        if module.startswith(prefix):
            module = module[len(prefix) :]
    return _replace_words(module, _CLIP_RENAMES)


def targets(component: str, module: str) -> List[Tuple[str, Optional[int]]]:
    """MLX ``(path, half)`` targets of a diffusers module name in ``component``."""
    if component == "unet":
        return unet_targets(module)
    return [(clip_target(module), None)]


def _invert(table: Tuple[Tuple[str, str], ...]) -> Tuple[Tuple[str, str], ...]:
    return tuple((new, old) for old, new in reversed(table))


def unet_module_name(path: str) -> str:
    """Diffusers name of an MLX UNet path (linear1 / linear2 both give ``ff.net.0.proj``)."""
    name = _replace_words(path, _invert(_UNET_RENAMES))
    for half in ("linear1", "linear2"):
        if name.endswith("." + half):
            return name[: -len(half)] + "ff.net.0.proj"
    return name


def clip_module_name(path: str) -> str:
    """Transformers name of an MLX CLIP text-encoder path."""
    name = _replace_words(path, _invert(_CLIP_RENAMES))
    if name.startswith("layers."):
        return "text_model.encoder." + name
    return "text_model." + name


def module_name(component: str, path: str) -> str:
    """Diffusers / transformers module name of an MLX path in ``component``."""
    return unet_module_name(path) if component == "unet" else clip_module_name(path)


def kohya_prefix(component: str, sdxl: bool) -> str:
    """kohya prefix of a component (``lora_te`` for SD 1/2, ``lora_te1`` for SDXL)."""
    if component == "unet":
        return "lora_unet"
    if component == "te1":
        return "lora_te1" if sdxl else "lora_te"
    return "lora_te2"


def kohya_key(component: str, module: str, role: str, sdxl: bool = False) -> str:
    """kohya key of a diffusers module name and a role (down / up / alpha)."""
    suffix = {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha"}[
        role
    ]
    return f"{kohya_prefix(component, sdxl)}_{module.replace('.', '_')}.{suffix}"


def diffusers_key(component: str, module: str, role: str) -> str:
    """diffusers / PEFT key of a diffusers module name and a role (down / up / alpha)."""
    prefix = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}[component]
    suffix = {"down": "lora_A.weight", "up": "lora_B.weight", "alpha": "alpha"}[role]
    return f"{prefix}.{module}.{suffix}"
