"""Technique recipes: a TOML or JSON file (or CLI flags) that says what to apply.

A recipe is a table of lists, one list per technique, each entry the keyword
arguments of the matching ``Pulse`` method::

    [generate]
    steps = 20
    cfg = 7.5

    [[inject]]
    block = "structure"
    prompt = "blue"
    weight = 0.8
    sigma_start = 15.0
    sigma_end = 0.0

    [[reweight]]
    phrase = "red"
    scale = 2.0

Sections: generate (negative, steps, cfg, seed, size), inject, reweight, mask,
keep_only, region, self_attention (Pulse methods), bend (a bend table or
``file``), lora (``path`` and ``weight``, or ``blend``), capture (``dir`` and
optional ``blocks``). A recipe is parsed and checked once, into a typed
``Recipe``: unknown sections or fields, missing fields, wrong types (booleans
are booleans, integers are integers) and numbers that are not finite or out
of range are ``RecipeError``s naming the file, the entry and the field.
CLI flags go through the same checks (``Recipe.add``).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import checks, tomlfile
from .bending.config import (
    BendConfig,
    BendingSettings,
    ConfigError,
    bend_from_dict,
    load_settings,
)
from .masks import as_mask
from .prompt_weights import SYNTAXES
from .pulse import WEIGHT_MODES, Pulse

PULSE_SECTIONS = {
    "inject": "inject",
    "reweight": "reweight",
    "mask": "mask_tokens",
    "keep_only": "keep_only",
    "region": "regional",
    "self_attention": "self_attention",
    "pag": "perturbed_attention",
}
OTHER_SECTIONS = ("bend", "lora", "capture")
GENERATE_FIELDS = (
    "negative",
    "steps",
    "cfg",
    "seed",
    "size",
    "weights",
    "weights_mode",
)
MAX_STEPS = 1000
MAX_CFG = 100.0
MAX_SEED = 2**64 - 1


class RecipeError(checks.FieldError):
    """A recipe file or flag does not say something this plugin can do."""


# ------------------------------------------------------------ field checks
def _selector(name: str, value: Any) -> Union[str, List[str]]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise RecipeError(
        f"{name}: expected a block selector or a list of them, got {value!r}"
    )


def _mask(name: str, value: Any) -> Any:
    try:
        as_mask(value)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{name}: {err}") from err
    return value


def _phrases(name: str, value: Any) -> Union[str, List[str]]:
    if isinstance(value, str):
        return checks.text(name, value, empty=False, error=RecipeError)
    if isinstance(value, list) and value:
        return [
            checks.text(f"{name}[{i}]", v, empty=False, error=RecipeError)
            for i, v in enumerate(value)
        ]
    raise RecipeError(f"{name}: expected a phrase or a list of them, got {value!r}")


def _steps(name: str, value: Any) -> Tuple[Optional[int], Optional[int]]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise RecipeError(
            f"{name}: expected a pair [start, end] of step indices (null for open), "
            f"got {value!r}"
        )
    return tuple(
        checks.optional(checks.integer, f"{name}[{i}]", v, 0, error=RecipeError)
        for i, v in enumerate(value)
    )


def _text(name: str, value: Any) -> str:
    return checks.text(name, value, empty=False, error=RecipeError)


def _positive(name: str, value: Any) -> float:
    return checks.number(name, value, 0.0, error=RecipeError)


def _boolean(name: str, value: Any) -> bool:
    return checks.boolean(name, value, error=RecipeError)


FIELDS: Dict[str, Callable[[str, Any], Any]] = {
    "block": _selector,
    "prompt": _text,
    "phrase": _text,
    "phrases": _phrases,
    "weight": _positive,
    "scale": _positive,
    "sigma_start": _positive,
    "sigma_end": _positive,
    "steps": _steps,
    "mode": _text,
    "rows": lambda n, v: checks.choice(n, v, ("cond", "all"), error=RecipeError),
    "mask": _mask,
    "query_region": _mask,
    "key_region": _mask,
    "keep_bos": _boolean,
    "symmetric": _boolean,
}


# Keyword arguments the region and mask sections pass on, and their defaults.
EXTRA_FIELDS = {
    "region": {"steps": None, "rows": "cond"},
    "mask": {
        "sigma_start": None,
        "sigma_end": None,
        "prompt": None,
        "mask": None,
        "mode": "prob",
        "steps": None,
        "rows": "cond",
    },
}


def _signature(section: str) -> Tuple[List[str], List[str], List[str]]:
    """(allowed, required, may be null) fields of a technique section."""
    method = getattr(Pulse, PULSE_SECTIONS[section])
    params = [
        p
        for p in inspect.signature(method).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    defaults = {p.name: p.default for p in params}
    defaults.update(EXTRA_FIELDS.get(section, {}))
    required = [p.name for p in params if p.default is p.empty]
    nullable = [name for name, default in defaults.items() if default is None]
    return list(defaults), required, nullable


def check_fields(where: str, entry: Any, allowed, required=()) -> Dict[str, Any]:
    """entry as a dict when it is a table of allowed fields with every required one."""
    if not isinstance(entry, dict):
        raise RecipeError(f"{where}: expected a table, got {entry!r}")
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise RecipeError(
            f"{where}: unknown field {unknown[0]!r}; expected some of {sorted(allowed)}"
        )
    missing = [k for k in required if k not in entry]
    if missing:
        raise RecipeError(f"{where}: missing field {missing[0]!r}")
    return dict(entry)


def technique_entry(section: str, entry: Any, where: str) -> Dict[str, Any]:
    """A technique's keyword arguments, every field present, known and typed."""
    allowed, required, nullable = _signature(section)
    entry = check_fields(where, entry, allowed, required)
    out = {}
    for key, value in entry.items():
        name = f"{where}.{key}"
        if value is None and key in nullable:
            out[key] = None
        else:
            out[key] = FIELDS[key](name, value)
    return out


def generate_entry(data: Any, where: str) -> Dict[str, Any]:
    """The [generate] section (or the CLI's flags), every value typed and in range."""
    hint = {"prompt": "the command's argument", "model": "--model"}
    if isinstance(data, dict):
        for key in hint:
            if key in data:
                raise RecipeError(
                    f"{where}{key}: not a recipe field; give it as {hint[key]}"
                )
    data = check_fields(where.rstrip(".") or "generate", data, GENERATE_FIELDS)
    checkers = {
        "negative": lambda n, v: checks.text(n, v, error=RecipeError),
        "steps": lambda n, v: checks.integer(n, v, 1, MAX_STEPS, error=RecipeError),
        "cfg": lambda n, v: checks.number(n, v, 0.0, MAX_CFG, error=RecipeError),
        "seed": lambda n, v: checks.integer(n, v, 0, MAX_SEED, error=RecipeError),
        "size": lambda n, v: checks.integer(n, v, 1, error=RecipeError),
        "weights": lambda n, v: checks.choice(n, v, SYNTAXES, error=RecipeError),
        "weights_mode": lambda n, v: checks.choice(
            n, v, WEIGHT_MODES, error=RecipeError
        ),
    }
    return {k: checkers[k](f"{where}{k}", v) for k, v in data.items() if v is not None}


# ------------------------------------------------------------------ recipe
@dataclass(frozen=True)
class LoraFile:
    """A LoRA .safetensors file and its weight."""

    path: str
    weight: float = 1.0


@dataclass(frozen=True)
class BlendFile:
    """A LoRA blend file (lora.blend)."""

    path: str


@dataclass(frozen=True)
class Capture:
    """Record the attention maps into a gallery under dir."""

    dir: str = "pulse-capture"
    blocks: Optional[Union[str, List[str]]] = None


@dataclass
class Recipe:
    """What to apply, parsed and checked: techniques, bends, LoRAs, capture, settings."""

    techniques: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    generate: Dict[str, Any] = field(default_factory=dict)
    bending: Optional[BendingSettings] = None
    loras: List[Union[LoraFile, BlendFile]] = field(default_factory=list)
    capture: Optional[Capture] = None
    origins: Dict[str, List[str]] = field(default_factory=dict, repr=False)

    def add(self, section: str, entry: Any, source: str = "recipe") -> None:
        """Check one entry of a section and add it; errors name source, entry and field."""
        i = len(self.origins.get(section, []))
        where = f"{source}: {section}[{i}]"
        if section in PULSE_SECTIONS:
            self.techniques.setdefault(section, []).append(
                technique_entry(section, entry, where)
            )
        elif section == "bend":
            self._add_bend(entry, where)
        elif section == "lora":
            self.loras.append(_lora_entry(entry, where))
        elif section == "capture":
            if self.capture is not None:
                raise RecipeError(f"{where}: expected one capture table")
            entry = check_fields(where, entry, ("dir", "blocks"))
            self.capture = Capture(
                _text(f"{where}.dir", entry.get("dir", Capture.dir)),
                checks.optional(_selector, f"{where}.blocks", entry.get("blocks")),
            )
        else:
            raise _unknown_section(section, source)
        self.origins.setdefault(section, []).append(where)

    def _add_bend(self, entry: Any, where: str) -> None:
        if not isinstance(entry, dict):
            raise RecipeError(f"{where}: expected a table, got {entry!r}")
        if self.bending is None:
            self.bending = BendingSettings([], apply_to_output=True)
        if "file" in entry:
            if set(entry) != {"file"}:
                raise RecipeError(f"{where}: a bend with 'file' takes no other field")
            try:
                loaded = load_settings(_text(f"{where}.file", entry["file"]))
            except ConfigError as err:
                raise RecipeError(f"{where}: {err}") from err
            if loaded.enabled:
                self.bending.bends += loaded.bends
            self.bending.apply_to_output = loaded.apply_to_output
            self.bending.record = self.bending.record and loaded.record
        else:
            self.bending.bends.append(bend_from_dict(entry, f"{where}."))

    @property
    def bends(self) -> List[BendConfig]:
        return self.bending.bends if self.bending is not None else []

    @property
    def empty(self) -> bool:
        return not (
            any(self.techniques.values()) or self.bends or self.loras or self.capture
        )


def _unknown_section(section: str, source: str) -> RecipeError:
    known = sorted([*PULSE_SECTIONS, *OTHER_SECTIONS, "generate"])
    return RecipeError(
        f"{source}: unknown section {section!r}; expected one of {known}"
    )


def _lora_entry(entry: Any, where: str) -> Union[LoraFile, BlendFile]:
    if isinstance(entry, dict) and "blend" in entry:
        entry = check_fields(where, entry, ("blend",))
        return BlendFile(_text(f"{where}.blend", entry["blend"]))
    entry = check_fields(where, entry, ("path", "weight"), ("path",))
    weight = checks.number(
        f"{where}.weight", entry.get("weight", 1.0), error=RecipeError
    )
    return LoraFile(_text(f"{where}.path", entry["path"]), weight)


def load(path: Path) -> Recipe:
    """Read a recipe from .toml or .json, checked."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: expected a recipe file, got a folder")
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    if path.suffix not in (".json", ".toml"):
        raise RecipeError(f"{path}: expected a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read it ({err})") from err
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomlfile.loads(text)
    except (json.JSONDecodeError, ValueError) as err:
        if isinstance(err, RecipeError):
            raise
        raise RecipeError(
            f"{path}: not valid {path.suffix[1:].upper()}: {err}"
        ) from err
    return from_dict(data, str(path))


def from_dict(data: Dict[str, Any], source: str = "recipe") -> Recipe:
    """A Recipe from parsed TOML/JSON, every section and field checked."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a table of technique lists")
    recipe = Recipe()
    for section, entries in data.items():
        if section == "generate":
            recipe.generate = generate_entry(entries, f"{source}: generate.")
            continue
        if section not in (*PULSE_SECTIONS, *OTHER_SECTIONS):
            raise _unknown_section(section, source)
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) for e in entries
        ):
            raise RecipeError(
                f"{source}: {section} must be a list of tables ([[{section}]])"
            )
        for entry in entries:
            recipe.add(section, entry, source)
    return recipe


def apply_to(pulse, recipe: Recipe) -> List[str]:
    """Add the recipe's attention techniques to a Pulse; returns one line per technique.

    Phrases are looked up in the Pulse's prompt (``Pulse(pipe, prompt=...)``)
    unless an entry names its own ``prompt``.
    """
    done = []
    for section, method_name in PULSE_SECTIONS.items():
        method = getattr(pulse, method_name)
        wheres = recipe.origins.get(section, [])
        for i, entry in enumerate(recipe.techniques.get(section, [])):
            where = wheres[i] if i < len(wheres) else f"{section}[{i}]"
            try:
                method(**entry)
            except (TypeError, ValueError) as err:
                raise RecipeError(f"{where}: {err}") from err
            done.append(
                f"{section}: " + ", ".join(f"{k}={v!r}" for k, v in entry.items())
            )
    return done


def parse_flag(section: str, text: str) -> Dict[str, Any]:
    """A CLI flag ``key=value,key=value`` as a recipe entry (numbers and lists parsed)."""
    entry: Dict[str, Any] = {}
    for part in _split(text):
        if "=" not in part:
            raise RecipeError(
                f"--{section.replace('_', '-')}: expected key=value pairs, got {part!r}"
            )
        key, value = part.split("=", 1)
        entry[key.strip()] = _value(value.strip())
    return entry


def _split(text: str) -> List[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p for p in parts + [current] if p.strip()]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
