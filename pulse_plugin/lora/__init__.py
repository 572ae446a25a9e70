"""LoRA style adapters for upstream MLX Stable Diffusion: load, fuse/unfuse, blend, train."""

from .adapters import (
    LoRAConv2d,
    LoRALinear,
    active,
    apply,
    fuse,
    match,
    remove,
    set_weights,
    unfuse,
)
from .io import (
    LoRA,
    LoRAError,
    LoRALayer,
    from_tensors,
    load_lora,
    save_lora,
    to_tensors,
)

__all__ = [
    "LoRA",
    "LoRAConv2d",
    "LoRAError",
    "LoRALayer",
    "LoRALinear",
    "active",
    "apply",
    "from_tensors",
    "fuse",
    "load_lora",
    "match",
    "remove",
    "save_lora",
    "set_weights",
    "to_tensors",
    "unfuse",
]
