"""Random LoRA files for a given model, in kohya or diffusers naming (tests and benchmarks)."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from . import formats

ATTENTION = ("query_proj", "key_proj", "value_proj", "out_proj")


def target_paths(model: nn.Module, kinds: Iterable[str] = ("attn",)) -> List[str]:
    """MLX paths of Linear / Conv2d layers selected by kind: attn, ff, proj, resnet, conv, all."""
    kinds = set(kinds)
    out = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        last = path.split(".")[-1]
        is_attn = last in ATTENTION
        is_ff = last in ("linear1", "linear2", "linear3")
        is_proj = last in ("proj_in", "proj_out")
        is_conv = isinstance(module, nn.Conv2d)
        chosen = (
            "all" in kinds
            or ("attn" in kinds and is_attn)
            or ("ff" in kinds and is_ff)
            or ("proj" in kinds and is_proj)
            or ("conv" in kinds and is_conv)
            or (
                "resnet" in kinds
                and (is_conv or last in ("conv_shortcut", "time_emb_proj"))
            )
        )
        if chosen:
            out.append(path)
    return sorted(out)


def random_tensors(
    model: nn.Module,
    component: str,
    paths: Iterable[str],
    rank: int = 4,
    alpha: Optional[float] = None,
    fmt: str = "kohya",
    sdxl: bool = False,
    seed: int = 0,
    zero_up: bool = False,
    std: float = 0.05,
) -> Dict[str, mx.array]:
    """Random LoRA tensors (PyTorch layout) for ``paths`` of ``model``, named in ``fmt``."""
    key = mx.random.key(seed)
    modules: Dict[str, Tuple[tuple, bool]] = {}
    for path in paths:
        module = _get(model, path)
        name = formats.module_name(component, path)
        w = module.weight
        if isinstance(module, nn.Conv2d):
            shape = (w.shape[0], w.shape[3], w.shape[1], w.shape[2])  # O, I, kh, kw
            conv = True
        else:
            shape = tuple(w.shape)
            conv = False
        if name in modules:  # linear1 + linear2 -> one ff.net.0.proj of twice the rows
            (o, i), _ = modules[name]
            shape = (o + shape[0], i)
        modules[name] = (shape, conv)
    out: Dict[str, mx.array] = {}
    for name, (shape, conv) in sorted(modules.items()):
        key, k1, k2 = mx.random.split(key, 3)
        down_shape = (rank, *shape[1:])
        up_shape = (shape[0], rank, 1, 1) if conv else (shape[0], rank)
        down = std * mx.random.normal(down_shape, key=k1)
        up = mx.zeros(up_shape) if zero_up else std * mx.random.normal(up_shape, key=k2)
        tensors = {"down": down, "up": up}
        if alpha is not None:
            tensors["alpha"] = mx.array(float(alpha))
        for role, value in tensors.items():
            if fmt == "kohya":
                k = formats.kohya_key(component, name, role, sdxl)
            else:
                k = formats.diffusers_key(component, name, role)
            out[k] = value
    return out


def _get(model: nn.Module, path: str):
    node = model
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node
