"""Read and write LoRA safetensors files (never pickle), with validation that names the key."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import mlx.core as mx

from .. import tensorfile
from . import config as lora_config
from . import formats, lycoris
from .config import AdapterConfig, AdapterConfigError

# Files a LoRA folder may hold: PEFT's save_pretrained and diffusers' save_lora_weights.
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
LYCORIS_ROLES = set(lycoris.LOHA_ROLES + lycoris.LOKR_ROLES)


class LoRAError(ValueError):
    """A LoRA file or adapter is invalid or does not fit the model."""


@dataclass
class LoRALayer:
    """One low-rank update ``delta W = scale * up @ down`` of an MLX Linear or Conv2d.

    Arrays are in MLX layout: Linear ``down`` (r, in), ``up`` (out, r);
    Conv2d ``down`` (r, kh, kw, in), ``up`` (out, 1, 1, r). A ``flat`` layer
    (from LyCORIS) has a 2-D ``down`` whose columns are PyTorch's (in, kh, kw)
    for a conv target, shaped when it is fitted to the module.
    """

    component: str
    path: str
    down: mx.array
    up: mx.array
    alpha: float
    source: str = ""
    rslora: bool = False
    flat: bool = False  # from LyCORIS: a conv's down is (r, in*kh*kw) until fitted

    def __post_init__(self) -> None:
        label = self.source or f"{self.component}:{self.path}"
        if self.down.ndim == 0 or self.down.shape[0] == 0:
            raise LoRAError(
                f"{label}: rank 0 (down is {tuple(self.down.shape)}); a LoRA layer "
                "needs rank >= 1"
            )
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
            or self.alpha <= 0
        ):
            raise LoRAError(
                f"{label}: alpha = {self.alpha!r}, expected a finite positive number"
            )

    @property
    def rank(self) -> int:
        """The rank r (rows of ``down``)."""
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """``alpha / rank`` (``alpha / sqrt(rank)`` for rsLoRA)."""
        return lora_config.scale(self.rank, self.alpha, self.rslora)

    @property
    def kohya_alpha(self) -> float:
        """The alpha that gives this layer's scale as ``alpha / rank`` (kohya's rule)."""
        return self.alpha if not self.rslora else self.scale * self.rank

    @property
    def is_conv(self) -> bool:
        """True for a conv (LoCon) layer, False for a linear one."""
        return self.down.ndim == 4


@dataclass
class LoRA:
    """A loaded LoRA: layers keyed by ``(component, mlx_path)``, file metadata and skipped keys."""

    name: str
    layers: Dict[Tuple[str, str], LoRALayer]
    metadata: Dict[str, str] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)
    source_format: str = ""
    layers_per_block: Optional[int] = None  # assumed by kohya SGM names, if any


def delta_weight(layer: LoRALayer) -> mx.array:
    """``scale * up @ down`` in float32, shaped like the target's MLX weight."""
    down = layer.down.astype(mx.float32)
    up = layer.up.astype(mx.float32)
    if layer.is_conv:
        r = layer.rank
        flat = up.reshape(up.shape[0], r) @ down.reshape(r, -1)
        return (layer.scale * flat).reshape(up.shape[0], *down.shape[1:])
    return layer.scale * (up @ down)


def all_finite(x: mx.array) -> bool:
    """True if every element of ``x`` is finite."""
    return bool(mx.all(mx.isfinite(x.astype(mx.float32))).item())


def _torch_to_mlx(key: str, down: mx.array, up: mx.array) -> Tuple[mx.array, mx.array]:
    """Convert A/B from PyTorch layout (conv: O, I, kh, kw) to MLX layout, checking shapes."""
    if down.ndim != up.ndim or down.ndim not in (2, 4):
        raise LoRAError(
            f"{key}: down {tuple(down.shape)} and up {tuple(up.shape)} must both be "
            "2-D (linear) or both 4-D (conv)"
        )
    if down.shape[0] != up.shape[1]:
        raise LoRAError(
            f"{key}: rank mismatch, down has {down.shape[0]} rows but up has "
            f"{up.shape[1]} columns (shapes {tuple(down.shape)}, {tuple(up.shape)})"
        )
    if down.ndim == 4:
        if tuple(up.shape[2:]) != (1, 1):
            raise LoRAError(f"{key}: conv up must be 1x1, got {tuple(up.shape)}")
        down = down.transpose(0, 2, 3, 1)
        up = up.transpose(0, 2, 3, 1)
    return down, up


def _tensor_alpha(key: str, value: Optional[mx.array]) -> Optional[float]:
    """The alpha stored as a tensor beside a layer (kohya), or None."""
    if value is None:
        return None
    if value.size != 1:
        raise LoRAError(
            f"{key}.alpha: expected a scalar, got shape {tuple(value.shape)}"
        )
    alpha = float(value.astype(mx.float32).reshape(-1)[0].item())
    if not math.isfinite(alpha) or alpha <= 0:
        raise LoRAError(f"{key}.alpha: expected a finite positive number, got {alpha}")
    return alpha


def _refuse_other_formats(keys: List[str], name: str) -> None:
    """LoRAError naming the format if an unknown key belongs to a known other format."""
    found: Dict[str, List[str]] = {}
    for key in keys:
        kind = formats.unsupported_format(key)
        if kind:
            found.setdefault(kind, []).append(key)
    if found:
        kind, keys = next(iter(found.items()))
        raise LoRAError(
            f"{name!r} is a {kind} adapter ({len(keys)} key(s) such as {keys[0]}), "
            "not a LoRA; this format is not supported"
        )


def _lycoris_layer(
    label: str, slot: Dict[str, Tuple[str, mx.array]], stored: Optional[float]
) -> Tuple[str, mx.array, mx.array, float]:
    """``(key, down, up, alpha)`` of a LoHa / LoKr layer as an exact LoRA (PyTorch layout)."""
    roles = set(slot) - {"alpha"}
    parts = {role: value for role, (_, value) in slot.items() if role != "alpha"}
    try:
        if roles <= set(lycoris.LOHA_ROLES):
            down, up, scale = lycoris.loha(label, parts, stored)
        elif roles <= set(lycoris.LOKR_ROLES):
            down, up, scale = lycoris.lokr(label, parts, stored)
        else:
            raise lycoris.LycorisError(
                f"{label}: mixes LoRA, LoHa and LoKr tensors ({sorted(roles)})"
            )
    except lycoris.LycorisError as exc:
        raise LoRAError(str(exc)) from None
    return slot[min(roles)][0], down, up, scale * down.shape[0]


def _layer_alpha(
    label: str,
    module: str,
    rank: int,
    stored: Optional[float],
    cfg: Optional[AdapterConfig],
) -> Tuple[float, bool]:
    """``(alpha, rslora)`` of a layer: from its config, its alpha tensor, or rank."""
    if cfg is None:
        return (stored if stored is not None else float(rank)), False
    if not cfg.targets(module):
        raise LoRAError(
            f"{label}: not among target_modules {cfg.target_modules!r} of {cfg.source}"
        )
    want_rank, alpha = cfg.rank_alpha(module)
    if want_rank != rank:
        raise LoRAError(
            f"{label}: rank {rank} in the tensors but {want_rank} in {cfg.source} "
            "(r / rank_pattern)"
        )
    if stored is not None and stored != alpha:
        raise LoRAError(
            f"{label}: alpha tensor {stored} disagrees with lora_alpha {alpha} of "
            f"{cfg.source}"
        )
    return alpha, cfg.use_rslora


def from_tensors(
    tensors: Dict[str, mx.array],
    name: str = "lora",
    metadata: Optional[Dict[str, str]] = None,
    skip_unknown: bool = False,
    configs: Optional[Dict[str, AdapterConfig]] = None,
    peft_config: Optional[AdapterConfig] = None,
    layers_per_block: int = formats.SGM_LAYERS_PER_BLOCK,
    peft_component: Optional[str] = None,
) -> LoRA:
    """Build a LoRA from a flat dict of kohya / diffusers / PEFT tensors.

    Scales come from ``configs`` (per component; by default parsed from the
    metadata's ``lora_adapter_metadata``), ``peft_config`` for PEFT-named keys,
    kohya ``.alpha`` tensors, or ``alpha = rank``. ``layers_per_block`` is the
    UNet's, for kohya SGM (SDXL) names.
    """
    if configs is None:
        try:
            configs = lora_config.from_metadata(metadata or {}, name)
        except AdapterConfigError as exc:
            raise LoRAError(str(exc)) from None
    groups: Dict[Tuple[str, str], Dict[str, Tuple[str, mx.array]]] = {}
    group_kinds: Dict[Tuple[str, str], str] = {}
    skipped: List[str] = []
    unknown: List[str] = []
    kinds = set()
    for key in sorted(tensors):
        try:
            parsed = formats.parse_key(key, layers_per_block, peft_component)
        except formats.LoRAFormatError as exc:
            raise LoRAError(str(exc)) from None
        if parsed is None:
            unknown.append(key)
            continue
        component, module, role, kind = parsed
        kinds.add(kind)
        slot = groups.setdefault((component, module), {})
        group_kinds[(component, module)] = kind
        if role in slot:
            raise LoRAError(
                f"{key}: duplicate {role} for module {module!r} ({slot[role][0]})"
            )
        value = tensors[key]
        if not all_finite(value):
            raise LoRAError(f"{key}: contains NaN or infinite values")
        slot[role] = (key, value)
    _refuse_other_formats(unknown, name)
    if unknown:
        if not skip_unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise LoRAError(
                f"{len(unknown)} key(s) of {name!r} are not kohya/diffusers/PEFT LoRA "
                f"keys: {shown} (pass skip_unknown=True to skip them)"
            )
        skipped.extend(f"{k}: unknown key" for k in unknown)
    if "peft" in kinds and peft_config is None:
        raise LoRAError(
            f"{name!r} has PEFT keys (base_model.model.*) but no {PEFT_CONFIG}: its "
            "r and lora_alpha (the scale) are unknown"
        )
    layers: Dict[Tuple[str, str], LoRALayer] = {}
    for (component, module), slot in groups.items():
        label = f"{component}:{module}"
        is_lycoris = bool(set(slot) & LYCORIS_ROLES)
        missing = [r for r in ("down", "up") if r not in slot and not is_lycoris]
        if missing:
            keys = ", ".join(k for k, _ in slot.values())
            raise LoRAError(
                f"{label}: missing {' and '.join(missing)} weight (have {keys})"
            )
        stored = _tensor_alpha(label, slot.get("alpha", (None, None))[1])
        if is_lycoris:
            down_key, down, up, alpha = _lycoris_layer(label, slot, stored)
            rslora = False
        else:
            down_key = slot["down"][0]
            down, up = _torch_to_mlx(label, slot["down"][1], slot["up"][1])
            is_peft = group_kinds[(component, module)] == "peft"
            cfg = peft_config if is_peft else configs.get(component)
            alpha, rslora = _layer_alpha(
                down_key, module, int(down.shape[0]), stored, cfg
            )
        for path, half in formats.targets(component, module):
            part_up = up
            if half is not None:
                if up.shape[0] % 2:
                    raise LoRAError(
                        f"{label}: ff.net.0.proj up has {up.shape[0]} rows, expected an even "
                        "number (upstream splits it into linear1 and linear2)"
                    )
                part_up = mx.split(up, 2, axis=0)[half]
            if (component, path) in layers:
                raise LoRAError(
                    f"{label}: maps to {path!r}, which another key already targets"
                )
            layers[(component, path)] = LoRALayer(
                component, path, down, part_up, alpha, down_key, rslora, is_lycoris
            )
    if not layers:
        raise LoRAError(f"{name!r} contains no LoRA layers")
    fmt = "+".join(sorted(kinds))
    lpb = layers_per_block if "kohya-sgm" in kinds else None
    return LoRA(name, layers, dict(metadata or {}), skipped, fmt, lpb)


def _weights_file(path: Path) -> Path:
    """The ``.safetensors`` of a LoRA path: the file itself or the one in a folder."""
    if path.is_dir():
        found = [path / n for n in (PEFT_WEIGHTS, DIFFUSERS_WEIGHTS)]
        found = [f for f in found if f.is_file()]
        if len(found) != 1:
            raise LoRAError(
                f"{path}: a LoRA folder holds exactly one of {PEFT_WEIGHTS} "
                f"(PEFT) or {DIFFUSERS_WEIGHTS} (diffusers); found "
                f"{[f.name for f in found] or 'neither'}"
            )
        return found[0]
    if path.suffix != ".safetensors":
        raise LoRAError(
            f"{path}: only .safetensors LoRA files are read (pickle formats are refused)"
        )
    if not path.is_file():
        raise LoRAError(f"{path}: no such file")
    return path


def load_lora(
    path: Union[str, Path],
    name: Optional[str] = None,
    skip_unknown: bool = False,
    layers_per_block: int = formats.SGM_LAYERS_PER_BLOCK,
    peft_component: Optional[str] = None,
) -> LoRA:
    """Load a kohya / diffusers / PEFT LoRA: a ``.safetensors`` file or a PEFT / diffusers folder.

    PEFT weights take ``r`` / ``lora_alpha`` from the adapter_config.json beside them.
    """
    path = Path(path)
    weights = _weights_file(path)
    try:
        tensors, metadata = tensorfile.load(weights)
    except tensorfile.TensorFileError as exc:
        raise LoRAError(str(exc)) from None
    config_path = weights.parent / PEFT_CONFIG
    peft_config = None
    if config_path.is_file() and any(
        k.startswith("base_model.model.") for k in tensors
    ):
        try:
            peft_config = lora_config.from_dict(
                lora_config.read_json(config_path), str(config_path)
            )
        except AdapterConfigError as exc:
            raise LoRAError(str(exc)) from None
    stem = path.name if path.is_dir() else path.stem
    try:
        return from_tensors(
            tensors,
            name or stem,
            metadata,
            skip_unknown,
            peft_config=peft_config,
            layers_per_block=layers_per_block,
            peft_component=peft_component,
        )
    except LoRAError as exc:
        raise LoRAError(f"{weights}: {exc}") from None


def _merge_halves(lora: LoRA) -> Dict[Tuple[str, str], LoRALayer]:
    """Per diffusers module: one layer; linear1/linear2 pairs become one block-diagonal layer."""
    out: Dict[Tuple[str, str], LoRALayer] = {}
    pairs: Dict[Tuple[str, str], Dict[int, LoRALayer]] = {}
    for (component, path), layer in lora.layers.items():
        module = formats.module_name(component, path)
        if component == "unet" and module.endswith("ff.net.0.proj"):
            half = 0 if path.endswith("linear1") else 1
            pairs.setdefault((component, module), {})[half] = layer
        else:
            out[(component, module)] = layer
    for (component, module), halves in pairs.items():
        if set(halves) != {0, 1}:
            raise LoRAError(
                f"{component}:{module}: linear1 and linear2 must both carry a LoRA to be saved "
                "as one ff.net.0.proj layer"
            )
        a, b = halves[0], halves[1]
        if a.scale != b.scale:
            raise LoRAError(f"{component}:{module}: linear1 and linear2 scales differ")
        if a.down is b.down or (
            a.down.shape == b.down.shape and mx.array_equal(a.down, b.down).item()
        ):
            down = a.down
            up = mx.concatenate([a.up, b.up], axis=0)
            alpha = a.kohya_alpha
        else:  # separate A matrices: exact block-diagonal rank 2r form
            down = mx.concatenate([a.down, b.down], axis=0)
            za = mx.zeros((a.up.shape[0], b.rank), dtype=a.up.dtype)
            zb = mx.zeros((b.up.shape[0], a.rank), dtype=b.up.dtype)
            up = mx.concatenate(
                [mx.concatenate([a.up, za], 1), mx.concatenate([zb, b.up], 1)], 0
            )
            alpha = a.scale * (a.rank + b.rank)
        out[(component, module)] = LoRALayer(component, a.path, down, up, alpha)
    return out


def to_tensors(
    lora: LoRA, fmt: str = "kohya", sdxl: bool = False
) -> Dict[str, mx.array]:
    """Flat kohya (``fmt='kohya'``) or diffusers/PEFT tensors in PyTorch layout."""
    if fmt not in ("kohya", "diffusers"):
        raise LoRAError(f"format must be 'kohya' or 'diffusers', got {fmt!r}")
    flat = [layer.source or layer.path for layer in lora.layers.values() if layer.flat]
    if flat:
        raise LoRAError(
            f"{lora.name}: layers read from LyCORIS (LoHa/LoKr) files are not saved "
            f"as LoRA ({flat[0]}, ...)"
        )
    out: Dict[str, mx.array] = {}
    for (component, module), layer in _merge_halves(lora).items():
        down, up = layer.down, layer.up
        if down.ndim == 4:
            down = down.transpose(0, 3, 1, 2)
            up = up.transpose(0, 3, 1, 2)
        for role, value in (
            ("down", down),
            ("up", up),
            ("alpha", mx.array(layer.kohya_alpha, dtype=mx.float32)),
        ):
            if fmt == "kohya":
                key = formats.kohya_key(component, module, role, sdxl)
            else:
                key = formats.diffusers_key(component, module, role)
            out[key] = value
    return out


def save_lora(
    lora: LoRA,
    path: Union[str, Path],
    fmt: str = "kohya",
    sdxl: bool = False,
    metadata: Optional[Dict[str, object]] = None,
) -> Path:
    """Write a LoRA as ``.safetensors`` (kohya names by default) with string metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise LoRAError(f"{path}: LoRA files are written as .safetensors")
    meta = dict(lora.metadata)
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path), to_tensors(lora, fmt, sdxl), metadata=meta)
    return path
