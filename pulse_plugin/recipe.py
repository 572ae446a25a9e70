"""Technique recipes: a TOML or JSON file (or CLI flags) that says what to apply.

A recipe is a table of lists, one list per technique, each entry the keyword
arguments of the matching ``Pulse`` method::

    [[inject]]
    block = "structure"
    prompt = "blue"
    weight = 0.8
    sigma_start = 15.0
    sigma_end = 0.0

    [[reweight]]
    phrase = "red"
    scale = 2.0

Sections: inject, reweight, mask, keep_only, region, self_attention (Pulse
methods), bend (attention bending), lora (path, weight). Unknown sections or
fields are errors that name them and list what is expected.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from . import tomlfile

PULSE_SECTIONS = {
    "inject": "inject",
    "reweight": "reweight",
    "mask": "mask_tokens",
    "keep_only": "keep_only",
    "region": "regional",
    "self_attention": "self_attention",
}
OTHER_SECTIONS = ("bend", "lora", "capture")
GENERATE_FIELDS = ("prompt", "negative", "steps", "cfg", "seed", "size", "model")


class RecipeError(ValueError):
    """A recipe file or flag does not say something this plugin can do."""


@dataclass
class Recipe:
    techniques: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    generate: Dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, entry: Dict[str, Any]) -> None:
        self.techniques.setdefault(section, []).append(entry)

    @property
    def empty(self) -> bool:
        return not any(self.techniques.values())

    def to_dict(self) -> Dict[str, Any]:
        return {
            **({"generate": self.generate} if self.generate else {}),
            **self.techniques,
        }


def load(path: Path) -> Recipe:
    """Read a recipe from .toml or .json, validated."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomlfile.loads(text)
        else:
            raise RecipeError(f"{path}: expected a .toml or .json file")
    except (json.JSONDecodeError, ValueError) as err:
        if isinstance(err, RecipeError):
            raise
        raise RecipeError(
            f"{path}: not valid {path.suffix[1:].upper()}: {err}"
        ) from err
    return from_dict(data, str(path))


def from_dict(data: Dict[str, Any], source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a table of technique lists")
    recipe = Recipe()
    known = sorted([*PULSE_SECTIONS, *OTHER_SECTIONS, "generate"])
    for section, entries in data.items():
        if section == "generate":
            _check_fields(f"{source}: generate", entries, GENERATE_FIELDS)
            recipe.generate = dict(entries)
            continue
        if section not in known:
            raise RecipeError(
                f"{source}: unknown section {section!r}; expected one of {known}"
            )
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) for e in entries
        ):
            raise RecipeError(
                f"{source}: {section} must be a list of tables ([[{section}]])"
            )
        for entry in entries:
            recipe.add(section, dict(entry))
    return recipe


def _check_fields(where: str, entry: Any, allowed) -> None:
    if not isinstance(entry, dict):
        raise RecipeError(f"{where}: expected a table")
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise RecipeError(
            f"{where}: unknown field {unknown[0]!r}; expected some of {sorted(allowed)}"
        )


def _method_fields(method) -> List[str]:
    params = inspect.signature(method).parameters.values()
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def apply_to(pulse, recipe: Recipe) -> List[str]:
    """Add the recipe's attention techniques to a Pulse; returns one line per technique.

    Phrases are looked up in the Pulse's prompt (``Pulse(pipe, prompt=...)``)
    unless an entry names its own ``prompt``.
    """
    done = []
    for section, method_name in PULSE_SECTIONS.items():
        method = getattr(pulse, method_name)
        allowed = _method_fields(method)
        if method_name == "regional":
            allowed += ["steps", "rows"]
        for i, entry in enumerate(recipe.techniques.get(section, [])):
            where = f"{section}[{i}]"
            _check_fields(where, entry, allowed)
            kwargs = dict(entry)
            if "steps" in kwargs and kwargs["steps"] is not None:
                kwargs["steps"] = tuple(kwargs["steps"])
            try:
                method(**kwargs)
            except TypeError as err:
                raise RecipeError(f"{where}: {err}") from err
            except ValueError as err:
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
