"""Blends of several LoRAs with weights: JSON / TOML files, apply, and a quick preview."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import tomlfile
from ..sampling import decode, final_latents, to_uint8
from . import adapters
from .io import LoRA, LoRAError, load_lora


@dataclass
class Blend:
    """A named mix of LoRA files with weights (any sign; ``normalize`` makes them sum to 1)."""

    name: str
    adapters: List[str]
    weights: List[float]
    description: str = ""
    preview_prompt: str = "a beautiful landscape"
    normalize: bool = False
    base_dir: Optional[str] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise LoRAError("blend field 'name': expected a non-empty string")
        if len(self.adapters) != len(self.weights):
            raise LoRAError(
                f"blend {self.name!r}: {len(self.adapters)} adapters but "
                f"{len(self.weights)} weights"
            )
        for i, w in enumerate(self.weights):
            if (
                isinstance(w, bool)
                or not isinstance(w, (int, float))
                or not math.isfinite(w)
            ):
                raise LoRAError(
                    f"blend {self.name!r}: weights[{i}] = {w!r} is not a finite number"
                )
        self.weights = [float(w) for w in self.weights]
        self.adapters = [str(a) for a in self.adapters]
        if len(set(self.adapter_names())) != len(self.adapters):
            raise LoRAError(
                f"blend {self.name!r}: two adapters have the same file name"
            )

    def effective_weights(self) -> List[float]:
        """The weights to use: as given, or divided by their sum when ``normalize``."""
        if not self.normalize:
            return list(self.weights)
        total = sum(self.weights)
        if abs(total) < 1e-12:
            raise LoRAError(
                f"blend {self.name!r}: cannot normalize weights that sum to 0"
            )
        return [w / total for w in self.weights]

    def adapter_paths(self) -> List[Path]:
        """Adapter files, relative paths taken from the blend file's folder."""
        base = Path(self.base_dir) if self.base_dir else Path(".")
        return [Path(a) if Path(a).is_absolute() else base / a for a in self.adapters]

    def adapter_names(self) -> List[str]:
        """Adapter names used when applied (the file stems, prefixed by the blend name)."""
        return [f"{self.name}/{Path(a).stem}" for a in self.adapters]


_FIELDS = ("name", "adapters", "weights", "description", "preview_prompt", "normalize")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise LoRAError(f"cannot write {value!r} to TOML")


def blend_to_toml(blend: Blend) -> str:
    """TOML text of a blend (a flat table, one key a line)."""
    data = asdict(blend)
    return "".join(f"{k} = {_toml_value(data[k])}\n" for k in _FIELDS)


def save_blend(blend: Blend, path: Union[str, Path]) -> Path:
    """Write a blend as ``.json`` or ``.toml`` (chosen by the suffix)."""
    path = Path(path)
    data = {k: asdict(blend)[k] for k in _FIELDS}
    if path.suffix == ".json":
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    elif path.suffix == ".toml":
        text = blend_to_toml(blend)
    else:
        raise LoRAError(f"{path}: blend files are .json or .toml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_blend(path: Union[str, Path]) -> Blend:
    """Read a blend from ``.json`` or ``.toml``; unknown or mistyped fields are errors."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".toml":
            data = tomlfile.loads(path.read_text(encoding="utf-8"))
        else:
            raise LoRAError(f"{path}: blend files are .json or .toml")
    except (OSError, ValueError) as exc:
        if isinstance(exc, LoRAError):
            raise
        raise LoRAError(f"{path}: cannot read blend ({exc})") from exc
    if not isinstance(data, dict):
        raise LoRAError(f"{path}: expected a table of fields {list(_FIELDS)}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise LoRAError(
            f"{path}: unknown blend field(s) {unknown}; known: {list(_FIELDS)}"
        )
    for required in ("name", "adapters", "weights"):
        if required not in data:
            raise LoRAError(f"{path}: missing blend field {required!r}")
    types = {f.name: f.type for f in fields(Blend)}
    for key in ("adapters", "weights"):
        if not isinstance(data[key], list):
            raise LoRAError(f"{path}: field {key!r} must be a list")
    for key in ("description", "preview_prompt"):
        if key in data and not isinstance(data[key], str):
            raise LoRAError(f"{path}: field {key!r} must be a string ({types[key]})")
    if "normalize" in data and not isinstance(data["normalize"], bool):
        raise LoRAError(f"{path}: field 'normalize' must be true or false")
    try:
        return Blend(**data, base_dir=str(path.parent))
    except LoRAError as exc:
        raise LoRAError(f"{path}: {exc}") from None


def blend_loras(blend: Blend, cache: Optional[Dict[str, LoRA]] = None) -> List[LoRA]:
    """Load the blend's LoRA files (through ``cache`` if given), named by ``adapter_names``."""
    out = []
    for path, name in zip(blend.adapter_paths(), blend.adapter_names()):
        key = str(path.resolve())
        lora = cache.get(key) if cache is not None else None
        if lora is None:
            lora = load_lora(path)
            if cache is not None:
                cache[key] = lora
        out.append(replace(lora, name=name))
    return out


def apply_blend(
    pipe,
    blend: Blend,
    cache: Optional[Dict[str, LoRA]] = None,
    skip_mismatched: bool = False,
) -> List[str]:
    """Apply a blend as runtime adapters; returns the adapter names (for set_weights / remove)."""
    loras = blend_loras(blend, cache)
    adapters.apply(
        pipe, loras, blend.effective_weights(), skip_mismatched=skip_mismatched
    )
    return [x.name for x in loras]


def update_blend_weights(pipe, blend: Blend, weights: Sequence[float]) -> Blend:
    """Change an applied blend's weights in place (no reload); returns the updated blend."""
    new = Blend(
        blend.name,
        blend.adapters,
        list(weights),
        blend.description,
        blend.preview_prompt,
        blend.normalize,
        blend.base_dir,
    )
    adapters.set_weights(pipe, dict(zip(new.adapter_names(), new.effective_weights())))
    return new


@dataclass
class PreviewConfig:
    """A quick preview: few steps, a small latent."""

    steps: int = 8
    latent_size: Tuple[int, int] = (32, 32)
    cfg_weight: float = 5.0
    seed: int = 0
    negative_prompt: str = ""


def generate(pipe, prompt: str, cfg: PreviewConfig) -> np.ndarray:
    """One image (H, W, 3) uint8 from ``pipe`` with the adapters currently applied."""
    latents = final_latents(
        pipe,
        prompt,
        num_steps=cfg.steps,
        cfg_weight=cfg.cfg_weight,
        negative_text=cfg.negative_prompt,
        latent_size=cfg.latent_size,
        seed=cfg.seed,
    )
    return to_uint8(decode(pipe, latents)[0])


def preview(
    pipe,
    blend: Optional[Blend] = None,
    prompt: Optional[str] = None,
    config: Optional[PreviewConfig] = None,
    cache: Optional[Dict[str, LoRA]] = None,
) -> np.ndarray:
    """A quick image of ``blend`` (applied for the call, then removed) or of the pipe as it is."""
    cfg = config or PreviewConfig()
    text = prompt if prompt is not None else (blend.preview_prompt if blend else "")
    if blend is None:
        return generate(pipe, text, cfg)
    names = apply_blend(pipe, blend, cache)
    try:
        return generate(pipe, text, cfg)
    finally:
        adapters.remove(pipe, names)
