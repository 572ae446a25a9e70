"""Bending configuration: dataclasses, validation naming the field, TOML/JSON/YAML loading."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .. import checks, tomlfile
from . import transforms

Layer = Union[int, str]


class ConfigError(ValueError):
    """A bending configuration error; the message starts with the offending field."""


@dataclass
class BendConfig:
    """One bend: a prompt word, a mode with its parameters, strength and windows."""

    token: str
    mode: str
    strength: float = 1.0
    renormalize: bool = True
    scale_factor: float = 1.0
    region: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    region_feather: float = 0.0
    kernel_size: int = 5
    sigma: float = 1.0
    sharpen_amount: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0
    zoom: float = 1.0
    center: Tuple[float, float] = (0.5, 0.5)
    flip: str = "horizontal"
    filter_type: str = "low"
    cutoff: float = 0.5
    band: Tuple[float, float] = (0.25, 0.75)
    apply_to_timesteps: Optional[Tuple[int, int]] = None
    sigma_range: Optional[Tuple[float, float]] = None
    apply_to_layers: Optional[List[Layer]] = None
    apply_to_uncond: bool = False
    name: Optional[str] = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def label(self) -> str:
        """The bend's name in warnings and records."""
        return self.name or f"{self.token}:{self.mode}"

    def transform_kwargs(self) -> Dict[str, Any]:
        """The parameters of transforms.transform for this bend's mode."""
        return {
            "scale": lambda: dict(factor=self.scale_factor),
            "regional_mask": lambda: dict(
                region=self.region, feather=self.region_feather
            ),
            "blur": lambda: dict(kernel_size=self.kernel_size, sigma=self.sigma),
            "sharpen": lambda: dict(
                amount=self.sharpen_amount,
                kernel_size=self.kernel_size,
                sigma=self.sigma,
            ),
            "translate": lambda: dict(dx=self.dx, dy=self.dy),
            "rotate": lambda: dict(degrees=self.angle, center=self.center),
            "spatial_scale": lambda: dict(zoom=self.zoom, center=self.center),
            "flip": lambda: dict(direction=self.flip),
            "frequency_filter": lambda: dict(
                kind=self.filter_type, cutoff=self.cutoff, band=self.band
            ),
        }[self.mode]()


@dataclass
class BendingSettings:
    """A set of bends and the phase: visualise only (default) or apply to the output."""

    bends: List[BendConfig] = field(default_factory=list)
    apply_to_output: bool = False
    enabled: bool = True
    record: bool = True


def _number(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf):
    return checks.number(name, value, lo, hi, error=ConfigError)


def _numbers(name: str, value: Any, n: int, lo=-math.inf, hi=math.inf) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConfigError(f"{name}: expected {n} numbers, got {value!r}")
    return tuple(_number(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value))


def _choice(name: str, value: Any, options: Sequence[str]) -> str:
    return checks.choice(name, value, options, error=ConfigError)


def _boolean(name: str, value: Any) -> bool:
    return checks.boolean(name, value, error=ConfigError)


def validate(c: BendConfig, prefix: str = "") -> None:
    """Check and normalise every field of c; errors name the field."""
    p = prefix
    if not isinstance(c.token, str) or not c.token.strip():
        raise ConfigError(f"{p}token: expected a word of the prompt, got {c.token!r}")
    c.mode = _choice(f"{p}mode", c.mode, transforms.MODES)
    c.strength = _number(f"{p}strength", c.strength, 0.0, 1.0)
    c.renormalize = _boolean(f"{p}renormalize", c.renormalize)
    c.scale_factor = _number(f"{p}scale_factor", c.scale_factor, 0.0)
    c.region = _numbers(f"{p}region", c.region, 4, 0.0, 1.0)
    if c.region[0] > c.region[2] or c.region[1] > c.region[3]:
        raise ConfigError(
            f"{p}region: expected [x1, y1, x2, y2] with x1 <= x2, y1 <= y2"
        )
    c.region_feather = _number(f"{p}region_feather", c.region_feather, 0.0, 1.0)
    if isinstance(c.kernel_size, bool) or not isinstance(c.kernel_size, int):
        raise ConfigError(
            f"{p}kernel_size: expected an odd integer, got {c.kernel_size!r}"
        )
    if c.kernel_size < 1 or c.kernel_size % 2 == 0:
        raise ConfigError(
            f"{p}kernel_size: expected an odd integer >= 1, got {c.kernel_size}"
        )
    c.sigma = _number(f"{p}sigma", c.sigma, 1e-6)
    c.sharpen_amount = _number(f"{p}sharpen_amount", c.sharpen_amount, 0.0)
    c.dx = _number(f"{p}dx", c.dx, -1.0, 1.0)
    c.dy = _number(f"{p}dy", c.dy, -1.0, 1.0)
    c.angle = _number(f"{p}angle", c.angle)
    c.zoom = _number(f"{p}zoom", c.zoom, 1e-3, 1e3)
    c.center = _numbers(f"{p}center", c.center, 2, 0.0, 1.0)
    c.flip = _choice(f"{p}flip", c.flip, transforms.FLIPS)
    c.filter_type = _choice(f"{p}filter_type", c.filter_type, transforms.FILTERS)
    c.cutoff = _number(f"{p}cutoff", c.cutoff, 0.0)
    c.band = _numbers(f"{p}band", c.band, 2, 0.0)
    if c.band[0] > c.band[1]:
        raise ConfigError(
            f"{p}band: expected [low, high] with low <= high, got {c.band}"
        )
    if c.apply_to_timesteps is not None:
        ts = c.apply_to_timesteps
        if (
            not isinstance(ts, (list, tuple))
            or len(ts) != 2
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in ts)
            or not 0 <= ts[0] < ts[1]
        ):
            raise ConfigError(
                f"{p}apply_to_timesteps: expected [start, end) step indices with "
                f"0 <= start < end, got {ts!r}"
            )
        c.apply_to_timesteps = (ts[0], ts[1])
    if c.sigma_range is not None:
        c.sigma_range = _numbers(f"{p}sigma_range", c.sigma_range, 2, 0.0)
        if c.sigma_range[0] > c.sigma_range[1]:
            raise ConfigError(f"{p}sigma_range: expected [low, high] with low <= high")
    if c.apply_to_layers is not None:
        layers = c.apply_to_layers
        if isinstance(layers, (str, int)):
            layers = [layers]
        if not isinstance(layers, (list, tuple)) or not all(
            isinstance(x, (int, str)) and not isinstance(x, bool) for x in layers
        ):
            raise ConfigError(
                f"{p}apply_to_layers: expected a list of layer indices or block "
                f"selectors, got {c.apply_to_layers!r}"
            )
        c.apply_to_layers = list(layers)
    c.apply_to_uncond = _boolean(f"{p}apply_to_uncond", c.apply_to_uncond)
    if c.name is not None:
        checks.text(f"{p}name", c.name, error=ConfigError)


def bend_from_dict(d: Mapping[str, Any], prefix: str = "") -> BendConfig:
    """A BendConfig from a mapping; unknown or missing fields are errors naming them."""
    if not isinstance(d, Mapping):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'bend'}: expected a table, got {d!r}"
        )
    known = {f.name for f in fields(BendConfig)}
    for key in d:
        if key not in known:
            raise ConfigError(
                f"{prefix}{key}: unknown field; known fields: {sorted(known)}"
            )
    for key in ("token", "mode"):
        if key not in d:
            raise ConfigError(f"{prefix}{key}: required field is missing")
    c = BendConfig.__new__(BendConfig)
    for f in fields(BendConfig):
        default = f.default
        setattr(c, f.name, d.get(f.name, default))
    validate(c, prefix)
    return c


def settings_from_dict(d: Mapping[str, Any]) -> BendingSettings:
    """Settings from a mapping, with or without a top-level ``attention_bending`` table."""
    if isinstance(d, Mapping) and "attention_bending" in d:
        d = d["attention_bending"]
    if not isinstance(d, Mapping):
        raise ConfigError(f"attention_bending: expected a table, got {d!r}")
    allowed = {"enabled", "apply_to_output", "phase", "record", "configs", "bends"}
    for key in d:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown field; known fields: {sorted(allowed)}")
    apply = d.get("apply_to_output", False)
    if "phase" in d:
        apply = (
            _choice("phase", d["phase"], ("visualize", "visualise", "apply")) == "apply"
        )
    apply = _boolean("apply_to_output", apply)
    enabled = _boolean("enabled", d.get("enabled", True))
    record = _boolean("record", d.get("record", True))
    key = "bends" if "bends" in d else "configs"
    items = d.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(f"{key}: expected a list of bends, got {items!r}")
    bends = [bend_from_dict(b, f"{key}[{i}].") for i, b in enumerate(items)]
    return BendingSettings(bends, apply, enabled, record)


def load_settings(path: Union[str, Path]) -> BendingSettings:
    """Settings from a .toml, .json or .yaml/.yml file (YAML needs PyYAML).

    Every error names the file; YAML is read with the safe loader, so a python
    tag is refused, never executed.
    """
    path = Path(path)
    try:
        return settings_from_dict(_read(path))
    except ConfigError as err:
        if str(err).startswith(f"{path}: "):
            raise
        raise ConfigError(f"{path}: {err}") from err


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ConfigError(f"{path}: expected a settings file, got a folder")
    if suffix not in (".toml", ".json", ".yaml", ".yml"):
        raise ConfigError(f"{path}: expected a .toml, .json, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such settings file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err})") from err
    if suffix == ".toml":
        try:
            return tomlfile.loads(text)
        except tomlfile.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON: {err}") from err
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"{path}: YAML configs need PyYAML (pip install pyyaml)"
        ) from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{path}: not valid YAML (or not plain data){at}: {problem}"
        ) from err


_PAREN = re.compile(r"\(([^()]*)\)")


def parse_prompt(prompt: str) -> Tuple[str, List[str]]:
    """Remove the guide's parentheses: (clean prompt, bendable words in order)."""
    if prompt.count("(") != prompt.count(")"):
        raise ConfigError(f"prompt: unbalanced parentheses in {prompt!r}")
    words = [m.group(1).strip() for m in _PAREN.finditer(prompt)]
    clean = _PAREN.sub(lambda m: m.group(1), prompt)
    if "(" in clean or ")" in clean:
        raise ConfigError(f"prompt: nested parentheses are not supported in {prompt!r}")
    return clean, [w for w in words if w]
