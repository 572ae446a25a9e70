"""LoRA scale settings from PEFT's adapter_config.json and diffusers' ``lora_adapter_metadata``.

Both hold PEFT ``LoraConfig`` fields: ``r``, ``lora_alpha``, ``rank_pattern`` and
``alpha_pattern`` (per-module overrides), ``use_rslora`` and ``target_modules``.
A layer's scale is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA). Settings
that change the maths in a way this plugin does not implement (DoRA, a LoRA
bias, another PEFT method) are refused by name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

METADATA_KEY = "lora_adapter_metadata"
# diffusers' prefixes inside lora_adapter_metadata -> components
METADATA_PREFIXES = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}
# Fields that would change the result if set; each is refused with its reason.
REFUSED = {
    "use_dora": "DoRA (weight-decomposed LoRA) is not supported",
    "lora_bias": "a LoRA bias on B is not supported",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D layers) does not occur in these models",
    "use_qalora": "QA-LoRA is not supported",
    "use_bdlora": "block-diagonal LoRA is not supported",
}
# Fields that must be empty (null, [] or {}) for the plain LoRA update to hold.
MUST_BE_EMPTY = {
    "layer_replication": "layer replication is not supported",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not supported",
    "modules_to_save": "fully trained extra modules are not supported",
    "trainable_token_indices": "trainable tokens are not supported",
    "target_parameters": "LoRA on bare parameters is not supported",
    "arrow_config": "Arrow routing is not supported",
    "kasa_config": "KaSA is not supported",
    "velora_config": "VeLoRA is not supported",
    "monteclora_config": "MonteCLoRA is not supported",
}


class AdapterConfigError(ValueError):
    """A LoRA config field that is malformed or cannot be honoured."""


@dataclass(frozen=True)
class AdapterConfig:
    """The scale-relevant fields of one component's PEFT LoraConfig."""

    r: int
    lora_alpha: float
    rank_pattern: Dict[str, int] = field(default_factory=dict)
    alpha_pattern: Dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    target_modules: Optional[Union[str, Tuple[str, ...]]] = None
    exclude_modules: Optional[Union[str, Tuple[str, ...]]] = None
    source: str = ""

    def rank_alpha(self, module: str) -> Tuple[int, float]:
        """The rank and alpha PEFT gives ``module`` (patterns first, as PEFT matches them)."""
        rank = self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(
            _pattern_key(self.alpha_pattern, module), self.lora_alpha
        )
        return rank, alpha

    def targets(self, module: str) -> bool:
        """True if ``target_modules`` selects ``module`` and ``exclude_modules`` does not."""
        if self.exclude_modules is not None and _selects(self.exclude_modules, module):
            return False
        return self.target_modules is None or _selects(self.target_modules, module)


def _selects(names: Union[str, Tuple[str, ...]], module: str) -> bool:
    """PEFT's rule: a string is a full-match pattern, a list holds names or dotted suffixes."""
    if isinstance(names, str):
        return re.fullmatch(names, module) is not None
    return any(module == name or module.endswith("." + name) for name in names)


def _pattern_key(patterns: Mapping[str, object], module: str) -> Optional[str]:
    """The first pattern that matches ``module`` as a whole or as a dotted suffix."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def scale(rank: int, alpha: float, rslora: bool) -> float:
    """``alpha / rank``, or ``alpha / sqrt(rank)`` for rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _positive(where: str, name: str, value: object, integer: bool) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if (
        isinstance(value, bool)
        or not ok
        or not math.isfinite(value)  # type: ignore[arg-type]
        or value <= 0  # type: ignore[operator]
    ):
        kind = "a positive integer" if integer else "a finite positive number"
        raise AdapterConfigError(f"{where}: {name} = {value!r}, expected {kind}")
    return value  # type: ignore[return-value]


def _pattern(where: str, name: str, value: object, integer: bool) -> Dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AdapterConfigError(f"{where}: {name} must map module patterns to numbers")
    out = {}
    for key, v in value.items():
        try:
            re.compile(key)
        except re.error as exc:
            raise AdapterConfigError(
                f"{where}: {name} key {key!r} is not a pattern ({exc})"
            ) from None
        out[key] = _positive(where, f"{name}[{key!r}]", v, integer)
    return out


def _flag(where: str, name: str, value: object) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise AdapterConfigError(f"{where}: {name} = {value!r}, expected true or false")
    return value


def _modules(
    where: str, name: str, value: object
) -> Optional[Union[str, Tuple[str, ...]]]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AdapterConfigError(
        f"{where}: {name} = {value!r}, expected a list of names or a pattern"
    )


def from_dict(data: Mapping[str, object], where: str) -> AdapterConfig:
    """Parse the LoraConfig fields of ``data``; ``where`` names the file (and prefix)."""
    peft_type = data.get("peft_type", "LORA")
    if peft_type not in ("LORA", None):
        raise AdapterConfigError(
            f"{where}: peft_type = {peft_type!r}; only PEFT LORA adapters are supported"
        )
    for name, reason in REFUSED.items():
        if _flag(where, name, data.get(name)):
            raise AdapterConfigError(f"{where}: {name} is true: {reason}")
    for name, reason in MUST_BE_EMPTY.items():
        if data.get(name):
            raise AdapterConfigError(f"{where}: {name} = {data[name]!r}: {reason}")
    if "r" not in data:
        raise AdapterConfigError(f"{where}: missing field 'r' (the LoRA rank)")
    r = int(_positive(where, "r", data["r"], integer=True))
    alpha = data.get("lora_alpha", r)
    return AdapterConfig(
        r=r,
        lora_alpha=float(_positive(where, "lora_alpha", alpha, integer=False)),
        rank_pattern=_pattern(where, "rank_pattern", data.get("rank_pattern"), True),
        alpha_pattern=_pattern(
            where, "alpha_pattern", data.get("alpha_pattern"), False
        ),
        use_rslora=_flag(where, "use_rslora", data.get("use_rslora")),
        target_modules=_modules(where, "target_modules", data.get("target_modules")),
        exclude_modules=_modules(where, "exclude_modules", data.get("exclude_modules")),
        source=where,
    )


def read_json(path: Path) -> Dict[str, object]:
    """A JSON object from ``path``, or AdapterConfigError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterConfigError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise AdapterConfigError(f"{path}: expected a JSON object")
    return data


def from_metadata(metadata: Mapping[str, str], where: str) -> Dict[str, AdapterConfig]:
    """Per-component configs from a diffusers file's ``lora_adapter_metadata`` (empty if none)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AdapterConfigError(
            f"{where}: metadata {METADATA_KEY} is not JSON ({exc})"
        ) from None
    if not isinstance(data, dict):
        raise AdapterConfigError(f"{where}: metadata {METADATA_KEY} is not an object")
    parts: Dict[str, Dict[str, object]] = {}
    unknown: List[str] = []
    for key, value in data.items():
        prefix, _, name = key.partition(".")
        if prefix not in METADATA_PREFIXES or not name:
            unknown.append(key)
            continue
        parts.setdefault(prefix, {})[name] = value
    if unknown:
        raise AdapterConfigError(
            f"{where}: metadata {METADATA_KEY} has keys for no known component: "
            f"{sorted(unknown)[:5]} (expected prefixes {sorted(METADATA_PREFIXES)})"
        )
    return {
        METADATA_PREFIXES[prefix]: from_dict(
            fields, f"{where}: {METADATA_KEY} {prefix}.*"
        )
        for prefix, fields in parts.items()
    }
