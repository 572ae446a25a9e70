"""The page's settings as the recipe TOML ``pulse generate --recipe`` reads, and back.

The page sends ``{"prompt", "model", "recipe"}``; ``recipe`` is a recipe table
(``[generate]`` plus one list per technique). The prompt and model are not
recipe fields (they are ``pulse generate``'s argument and ``--model``), so the
TOML carries them in its header comment, which ``parse_page`` reads back.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # the recipe reader's own fallback there

from ..recipe import RecipeError

HEADER = "# pulse studio recipe. Render it with:\n"
GENERATE_DEFAULTS = {"negative": "", "steps": 20, "cfg": 7.5, "seed": 0}
GENERATE_FIELDS = (*GENERATE_DEFAULTS, "size", "weights", "weights_mode")  # the page's
SECTIONS = (
    "generate",
    "inject",
    "reweight",
    "mask",
    "keep_only",
    "region",
    "self_attention",
    "pag",
    "bend",
    "lora",
    "capture",
)
_SECTION = re.compile(r"\b(" + "|".join((*SECTIONS, "bends")) + r")\b")


class PageError(ValueError):
    """A setting of the page is not usable; ``field`` names it (e.g. ``generate.steps``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class Page:
    """What the page shows: the prompt, the model and a recipe table."""

    prompt: str
    model: str = "toy"
    recipe: Dict[str, Any] = field(default_factory=dict)


def toml_value(value: Any, where: str) -> str:
    """One TOML value (string, bool, int, finite float, or a list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PageError(where, f"expected a finite number, got {value!r}")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v, where) for v in value) + "]"
    raise PageError(where, f"cannot be written to TOML: {value!r}")


def _table(entry: Dict[str, Any], where: str) -> str:
    if not isinstance(entry, dict):
        raise PageError(where, "expected a table of fields")
    return "".join(
        f"{key} = {toml_value(value, f'{where}.{key}')}\n"
        for key, value in entry.items()
        if value is not None  # TOML has no null: an unset optional field is left out
    )


def command_line(page: Page, file_name: str = "recipe.toml") -> str:
    """The ``pulse generate`` command that renders this page's recipe."""
    model = [] if page.model in ("", "toy") else ["--model", page.model]
    parts = ["pulse", "generate", page.prompt, "--recipe", file_name, *model]
    return " ".join(shlex.quote(p) for p in parts)


def to_toml(page: Page) -> str:
    """The recipe TOML of page, with the prompt, model and command in its header."""
    lines = [
        HEADER,
        f"#   {command_line(page)}\n",
        f"# prompt = {toml_value(page.prompt, 'prompt')}\n",
        f"# model = {toml_value(page.model or 'toy', 'model')}\n",
    ]
    generate = page.recipe.get("generate")
    if generate:
        lines += ["\n[generate]\n", _table(generate, "generate")]
    for section, entries in page.recipe.items():
        if section == "generate":
            continue
        if not isinstance(entries, list):
            raise PageError(section, "expected a list of tables")
        for i, entry in enumerate(entries):
            lines += [f"\n[[{section}]]\n", _table(entry, f"{section}[{i}]")]
    return "".join(lines)


def _header_value(text: str, key: str) -> Optional[str]:
    for line in text.splitlines():
        if line.startswith(f"# {key} = "):
            try:
                value = tomllib.loads(line[2:])[key]
            except tomllib.TOMLDecodeError:
                return None
            return value if isinstance(value, str) else None
    return None


def parse_page(text: str, prompt: str = "") -> Page:
    """A page from recipe TOML (the prompt from its header, else ``prompt``); PageError if unreadable."""
    from ..recipe import from_dict

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PageError("recipe", f"not valid TOML: {err}") from err
    check_generate(
        data.get("generate", {})
    )  # the page's own rule, named the same everywhere
    try:
        from_dict(data, "recipe")
    except RecipeError as err:
        raise PageError(section_of(str(err)), str(err)) from err
    return Page(
        _header_value(text, "prompt") or prompt,
        _header_value(text, "model") or "toy",
        data,
    )


def section_of(message: str) -> str:
    """The page field an error message names: ``section``, ``section.field`` or ``generate.<field>``."""
    message = re.split(r";|\bexpected\b", message, maxsplit=1)[
        0
    ]  # not the lists of names
    found = _SECTION.search(message)
    if found is None:
        return "recipe"
    section = "bend" if found.group(1) == "bends" else found.group(1)
    rest = message[found.end() :]
    if section == "generate":
        names = [k for k in GENERATE_FIELDS if re.search(rf"\b{k}\b", rest)]
        quoted = re.search(r"'([a-z_]+)'", rest)  # "unknown field 'x'"
        names += [quoted.group(1)] if quoted else []
        return f"generate.{names[0]}" if names else "generate"
    key = re.match(r"\[\d+\](?:\.|:\s*)([a-z_]+)\b", rest)
    return f"{section}.{key.group(1)}" if key else section


def page_from_json(data: Any) -> Page:
    """The page's JSON request, checked: prompt text, model text, recipe a table."""
    if not isinstance(data, dict):
        raise PageError("request", "expected a JSON object")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PageError("prompt", "expected some text")
    model = data.get("model") or "toy"
    if not isinstance(model, str):
        raise PageError("model", "expected 'toy' or a path")
    recipe = data.get("recipe") or {}
    if not isinstance(recipe, dict):
        raise PageError("recipe", "expected a table of technique lists")
    return Page(prompt, model.strip() or "toy", recipe)


def check_generate(generate: Any) -> Dict[str, Any]:
    """The [generate] table checked field by field (types and ranges)."""
    if not isinstance(generate, dict):
        raise PageError("generate", "expected a table")
    for key in generate:
        if key not in GENERATE_FIELDS:
            raise PageError(
                f"generate.{key}",
                f"the studio renders only {list(GENERATE_FIELDS)} of [generate]; "
                f"render a recipe with {key!r} with pulse generate",
            )
    out = dict(generate)
    for key in ("steps", "seed", "size"):
        if key in out:
            v = out[key]
            if isinstance(v, bool) or not isinstance(v, int):
                raise PageError(
                    f"generate.{key}", f"expected a whole number, got {v!r}"
                )
    if "steps" in out and not 1 <= out["steps"] <= 1000:
        raise PageError("generate.steps", f"expected 1 to 1000, got {out['steps']}")
    if "seed" in out and out["seed"] < 0:
        raise PageError("generate.seed", f"expected 0 or more, got {out['seed']}")
    if "cfg" in out:
        v = out["cfg"]
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
        ):
            raise PageError("generate.cfg", f"expected a finite number, got {v!r}")
    if "negative" in out and not isinstance(out["negative"], str):
        raise PageError("generate.negative", "expected text")
    return out
