"""Runtime LoRA wrappers, apply / remove / re-weight, and exact fuse / unfuse.

MLX calls ``type(module).__call__``, so a runtime adapter replaces the child
module in its parent (``parent.query_proj = LoRALinear(base)``) and removal
puts the original object back. Fusing keeps the original weight arrays and
unfusing restores them, so weights after unfuse are the very same arrays.
State lives on the pipeline object (``pipe._pulse_lora``), never in globals.

``apply`` and ``fuse`` are all-or-nothing: everything is checked before the
model is touched, and a failure while changing it (out of memory, Ctrl-C)
puts every layer back as it was before the error is raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import mlx.nn as nn

from .io import LoRA, LoRAError, LoRALayer, all_finite, load_lora

Slot = Tuple[str, str]  # (component, mlx_path)


class LoRAAdapter(nn.Module):
    """One named adapter on one layer: ``weight * scale * up(down(x))``."""

    def __init__(
        self, name: str, down: mx.array, up: mx.array, scale: float, weight: float
    ):
        super().__init__()
        self.name = name
        self.down = down
        self.up = up
        self.scale = float(scale)
        self.weight = float(weight)


class LoRALinear(nn.Module):
    """A Linear with any number of unfused LoRA adapters added to its output."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters: List[LoRAAdapter] = []

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        for a in self.adapters:
            if a.weight == 0.0:
                continue
            h = (x @ a.down.astype(x.dtype).T) @ a.up.astype(x.dtype).T
            y = y + (a.weight * a.scale) * h
        return y


class LoRAConv2d(nn.Module):
    """A Conv2d with unfused LoRA adapters: a k x k down conv and a 1 x 1 up conv."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters: List[LoRAAdapter] = []

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        b = self.base
        for a in self.adapters:
            if a.weight == 0.0:
                continue
            h = mx.conv2d(
                x,
                a.down.astype(x.dtype),
                stride=b.stride,
                padding=b.padding,
                dilation=b.dilation,
            )
            h = mx.conv2d(h, a.up.astype(x.dtype))
            y = y + (a.weight * a.scale) * h
        return y


WRAPPERS = (LoRALinear, LoRAConv2d)


@dataclass
class LoRAState:
    """What the plugin changed on one pipeline: runtime wrappers and fused originals."""

    wrappers: Dict[Slot, nn.Module] = field(default_factory=dict)
    adapters: Dict[str, List[Slot]] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)
    fused: Dict[Slot, mx.array] = field(default_factory=dict)
    fused_names: List[str] = field(default_factory=list)


@dataclass
class MatchReport:
    """Result of matching a LoRA against a pipeline: matched slots and skipped layers."""

    matched: List[Slot]
    skipped: List[str]


def state(pipe) -> LoRAState:
    """The LoRA state stored on ``pipe`` (created empty on first use)."""
    st = pipe.__dict__.get("_pulse_lora")
    if st is None:
        st = LoRAState()
        pipe.__dict__["_pulse_lora"] = st
    return st


def component_model(pipe, component: str) -> nn.Module:
    """The model of a component: ``unet``, ``te1`` (text_encoder / text_encoder_1) or ``te2``."""
    if component == "unet":
        return pipe.unet
    if component == "te1":
        for attr in ("text_encoder", "text_encoder_1"):
            if hasattr(pipe, attr):
                return getattr(pipe, attr)
    if component == "te2" and hasattr(pipe, "text_encoder_2"):
        return pipe.text_encoder_2
    raise LoRAError(
        f"the pipeline has no {component!r} component (SD has unet/te1, SDXL also te2)"
    )


def _step(node, part: str):
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise KeyError(part)
        return node[int(part)]
    if isinstance(node, nn.Module) and part in node:
        return node[part]
    raise KeyError(part)


def locate(root: nn.Module, path: str) -> Tuple[object, str, object]:
    """``(parent, last_part, module)`` of a dotted MLX path; raises KeyError if missing."""
    parts = path.split(".")
    parent = root
    for part in parts[:-1]:
        parent = _step(parent, part)
    return parent, parts[-1], _step(parent, parts[-1])


def _set_child(parent, part: str, module) -> None:
    if isinstance(parent, list):
        parent[int(part)] = module
    else:
        setattr(parent, part, module)


def _base(module):
    return module.base if isinstance(module, WRAPPERS) else module


def _fit(layer: LoRALayer, module) -> LoRALayer:
    """The layer reshaped to fit ``module``'s weight, or LoRAError saying what was expected."""
    label = f"{layer.source or layer.path} -> {layer.component}:{layer.path}"
    if not (all_finite(layer.down) and all_finite(layer.up)):
        raise LoRAError(f"{label}: contains NaN or infinite values")
    w = module.weight
    if isinstance(module, nn.Linear):
        down, up = layer.down, layer.up
        if layer.is_conv:
            if down.shape[1:3] != (1, 1):
                raise LoRAError(
                    f"{label}: a {down.shape[1]}x{down.shape[2]} conv LoRA cannot target a Linear"
                )
            down = down.reshape(down.shape[0], -1)
            up = up.reshape(up.shape[0], -1)
        expected = (w.shape[0], w.shape[1])
        got = (up.shape[0], down.shape[1])
        if got != expected:
            raise LoRAError(
                f"{label}: LoRA is {got} (out, in) but the Linear weight is {expected}"
            )
        return replace(layer, down=down, up=up)
    if isinstance(module, nn.Conv2d) and layer.flat and layer.down.ndim == 2:
        out, kh, kw, cin = w.shape
        if layer.down.shape[1] != cin * kh * kw or layer.up.shape[0] != out:
            raise LoRAError(
                f"{label}: LyCORIS layer is {(layer.up.shape[0], layer.down.shape[1])} "
                f"(out, in*kh*kw) but the Conv2d weight is {tuple(w.shape)}"
            )
        r = layer.rank
        down = layer.down.reshape(r, cin, kh, kw).transpose(0, 2, 3, 1)
        return replace(layer, down=down, up=layer.up.reshape(out, 1, 1, r))
    if isinstance(module, nn.Conv2d):
        if not layer.is_conv:
            raise LoRAError(
                f"{label}: a linear LoRA cannot target a Conv2d {tuple(w.shape)}"
            )
        got = (layer.up.shape[0], *layer.down.shape[1:])
        if got != tuple(w.shape):
            raise LoRAError(
                f"{label}: LoRA is {got} (out, kh, kw, in) but the Conv2d weight is "
                f"{tuple(w.shape)}"
            )
        return layer
    raise LoRAError(
        f"{label}: target is a {type(module).__name__}, not a Linear or Conv2d"
    )


def match(
    pipe, lora: LoRA, skip_mismatched: bool = False
) -> Tuple[List[Tuple[LoRALayer, Slot]], MatchReport]:
    """Fit every layer of ``lora`` to ``pipe``; errors (or skips, if asked) name the key."""
    fitted: List[Tuple[LoRALayer, Slot]] = []
    skipped: List[str] = []
    if lora.layers_per_block is not None:
        _check_layers_per_block(pipe, lora)
    for slot, layer in lora.layers.items():
        component, path = slot
        try:
            root = component_model(pipe, component)
            try:
                _, _, module = locate(root, path)
            except KeyError:
                raise LoRAError(
                    f"{layer.source or path}: no module {path!r} in {component} "
                    f"(LoRA {lora.name!r} does not fit this model)"
                ) from None
            fitted.append((_fit(layer, _base(module)), slot))
        except LoRAError as exc:
            if not skip_mismatched:
                raise LoRAError(
                    f"{lora.name}: {exc} (pass skip_mismatched=True to skip)"
                ) from None
            skipped.append(str(exc))
    if not fitted:
        raise LoRAError(f"{lora.name}: no layer of the LoRA fits this pipeline")
    return fitted, MatchReport([s for _, s in fitted], list(lora.skipped) + skipped)


def _check_layers_per_block(pipe, lora: LoRA) -> None:
    """The UNet must have the ResBlocks per level that the SGM names were read with."""
    actual = len(component_model(pipe, "unet").down_blocks[0].resnets)
    if actual != lora.layers_per_block:
        raise LoRAError(
            f"{lora.name}: its kohya SGM (input_blocks/output_blocks) names were read "
            f"for {lora.layers_per_block} ResBlocks per level, this UNet has {actual} "
            f"(load it with layers_per_block={actual})"
        )


def _as_lora(item: Union[LoRA, str]) -> LoRA:
    return item if isinstance(item, LoRA) else load_lora(item)


def _finite_weight(where: str, value: object) -> float:
    """``value`` as a float, or LoRAError naming ``where`` if it is not a finite number."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        raise LoRAError(f"{where} = {value!r}, expected a finite number")
    return float(value)


def _weights(n: int, weights: Optional[Sequence[float]]) -> List[float]:
    if weights is None:
        return [1.0] * n
    weights = [_finite_weight(f"weights[{i}]", w) for i, w in enumerate(weights)]
    if len(weights) != n:
        raise LoRAError(f"got {n} LoRAs but {len(weights)} weights")
    return weights


def _inputs(loras, weights) -> Tuple[List[LoRA], List[float]]:
    """One LoRA or several (objects or paths), with their weights (default 1 each)."""
    if isinstance(loras, (LoRA, str)):
        loras = [loras]
    loras = [_as_lora(x) for x in loras]
    return loras, _weights(len(loras), weights)


def apply(
    pipe,
    loras: Union[LoRA, str, Sequence[Union[LoRA, str]]],
    weights: Optional[Sequence[float]] = None,
    skip_mismatched: bool = False,
) -> List[MatchReport]:
    """Add runtime (unfused) adapters for ``loras`` with ``weights`` (any sign, default 1)."""
    loras, weights = _inputs(loras, weights)
    st = state(pipe)
    names = [x.name for x in loras]
    for name in names:
        if name in st.adapters or names.count(name) > 1:
            raise LoRAError(
                f"an adapter named {name!r} is already active; remove it or rename"
            )
    plans = [match(pipe, lora, skip_mismatched) for lora in loras]
    # Plan every change before making one: new wrappers and new adapter lists.
    created: Dict[Slot, Tuple[object, str, nn.Module]] = {}
    wrappers: Dict[Slot, nn.Module] = {}
    lists: Dict[Slot, List[LoRAAdapter]] = {}
    slots_of: Dict[str, List[Slot]] = {name: [] for name in names}
    for lora, w, (fitted, _) in zip(loras, weights, plans):
        for layer, slot in fitted:
            if slot not in wrappers:
                if slot in st.wrappers:
                    wrappers[slot] = st.wrappers[slot]
                else:
                    root = component_model(pipe, slot[0])
                    parent, part, module = locate(root, slot[1])
                    cls = LoRAConv2d if isinstance(module, nn.Conv2d) else LoRALinear
                    wrappers[slot] = cls(module)
                    created[slot] = (parent, part, wrappers[slot])
                lists[slot] = list(wrappers[slot].adapters)
            lists[slot].append(
                LoRAAdapter(lora.name, layer.down, layer.up, layer.scale, w)
            )
            slots_of[lora.name].append(slot)
    installed: List[Tuple[object, str, nn.Module]] = []
    try:
        for parent, part, wrapper in created.values():
            _set_child(parent, part, wrapper)
            installed.append((parent, part, wrapper.base))
    except BaseException:
        for parent, part, base in reversed(installed):
            _set_child(parent, part, base)
        raise
    for slot, wrapper in wrappers.items():
        wrapper.adapters = lists[slot]
        st.wrappers[slot] = wrapper
    for name, w in zip(names, weights):
        st.adapters[name] = slots_of[name]
        st.weights[name] = w
    return [report for _, report in plans]


def set_weights(pipe, weights: Dict[str, float]) -> None:
    """Change the weights of active adapters by name (no reloading)."""
    st = state(pipe)
    checked = {}
    for name, w in weights.items():
        if name not in st.adapters:
            raise LoRAError(
                f"no active adapter named {name!r} (active: {sorted(st.adapters)})"
            )
        checked[name] = _finite_weight(f"weights[{name!r}]", w)
    for name, w in checked.items():
        st.weights[name] = w
        for slot in st.adapters[name]:
            for a in st.wrappers[slot].adapters:
                if a.name == name:
                    a.weight = w


def active(pipe) -> Dict[str, float]:
    """Active runtime adapters and their weights."""
    return dict(state(pipe).weights)


def remove(pipe, names: Optional[Iterable[str]] = None) -> None:
    """Remove runtime adapters (all by default); wrappers left empty give back the original module."""
    st = state(pipe)
    names = list(st.adapters) if names is None else list(names)
    for name in names:
        if name not in st.adapters:
            raise LoRAError(
                f"no active adapter named {name!r} (active: {sorted(st.adapters)})"
            )
    for name in names:
        for slot in st.adapters.pop(name):
            wrapper = st.wrappers[slot]
            wrapper.adapters = [a for a in wrapper.adapters if a.name != name]
            if not wrapper.adapters:
                parent, part, _ = locate(component_model(pipe, slot[0]), slot[1])
                _set_child(parent, part, wrapper.base)
                del st.wrappers[slot]
        del st.weights[name]


def fused_weight(
    original: mx.array, items: Sequence[Tuple[LoRALayer, float]]
) -> mx.array:
    """``original + sum weight * scale * up @ down`` computed in float32 with one addmm per LoRA."""
    w = original if original.dtype == mx.float32 else original.astype(mx.float32)
    w = w.reshape(original.shape[0], -1)
    for layer, weight in items:
        up = layer.up.astype(mx.float32).reshape(layer.up.shape[0], layer.rank)
        down = layer.down.astype(mx.float32).reshape(layer.rank, -1)
        w = mx.addmm(w, up, down, alpha=weight * layer.scale, beta=1.0)
    w = w.reshape(original.shape)
    return w if w.dtype == original.dtype else w.astype(original.dtype)


def fuse(
    pipe,
    loras: Union[LoRA, str, Sequence[Union[LoRA, str]]],
    weights: Optional[Sequence[float]] = None,
    skip_mismatched: bool = False,
) -> List[MatchReport]:
    """Add ``sum_i weight_i * delta_i`` into the weights, keeping the originals for ``unfuse``."""
    loras, weights = _inputs(loras, weights)
    st = state(pipe)
    if st.fused:
        raise LoRAError(f"already fused ({', '.join(st.fused_names)}); unfuse first")
    plans = [match(pipe, lora, skip_mismatched) for lora in loras]
    per_slot: Dict[Slot, List[Tuple[LoRALayer, float]]] = {}
    for w, (fitted, _) in zip(weights, plans):
        if w == 0.0:
            continue
        for layer, slot in fitted:
            per_slot.setdefault(slot, []).append((layer, w))
    originals: Dict[Slot, Tuple[nn.Module, mx.array]] = {}
    try:
        for slot, items in per_slot.items():
            module = _base(locate(component_model(pipe, slot[0]), slot[1])[2])
            original = module.weight
            new = fused_weight(original, items)
            mx.eval(new)  # one layer at a time keeps the peak low
            originals[slot] = (module, original)
            module.weight = new
    except BaseException:
        for module, original in originals.values():
            module.weight = original
        raise
    st.fused = {slot: original for slot, (_, original) in originals.items()}
    st.fused_names = [x.name for x in loras]
    return [report for _, report in plans]


def unfuse(pipe) -> None:
    """Put back the original weight arrays saved by ``fuse`` (bit-identical)."""
    st = state(pipe)
    for slot, original in st.fused.items():
        _base(locate(component_model(pipe, slot[0]), slot[1])[2]).weight = original
    st.fused.clear()
    st.fused_names = []
