"""Renders for the page, through the functions ``pulse generate --recipe`` calls.

``parse`` writes the page as the recipe TOML it would export and reads that
very text back into ``cli.Settings`` and a ``Recipe``; ``technique_image``
hands them to ``cli.generate`` / ``cli.generate_with`` as ``pulse generate``
does, so the page and the command line give the same pixels.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import cli
from ..recipe import Recipe, RecipeError, from_dict
from .recipe_text import (
    GENERATE_DEFAULTS,
    Page,
    PageError,
    check_generate,
    section_of,
    to_toml,
    tomllib,
)

MAP_PIXELS = 128  # attention tiles are drawn at least this wide


class Cancelled(Exception):
    """The render was superseded or cancelled between two denoising steps."""


@dataclass
class Parsed:
    """A page turned into what ``pulse generate`` builds from its arguments."""

    settings: cli.Settings
    recipe: Recipe
    toml: str
    data: Dict[str, Any]  # the TOML as read back, what from_dict checked


class Models:
    """The loaded pipeline by --model name (the toy, a folder, or a file); one at a time."""

    def __init__(self):
        self._pipes: Dict[str, Tuple[Any, Optional[Path]]] = {}
        self._lock = threading.Lock()

    def loaded(self, name: str):
        """(pipe, path) if name is loaded already, else None (never loads)."""
        with self._lock:
            return self._pipes.get(name or "toy")

    def get(self, name: str):
        """(pipe, path) for name, loaded once; PageError('model') when it does not load."""
        name = name or "toy"
        with self._lock:
            if name not in self._pipes:
                try:
                    loaded = cli.load_model(name)
                except (cli.CliError, ValueError, OSError) as err:
                    raise PageError("model", str(err)) from err
                self._pipes = {name: loaded}  # a real model is gigabytes: keep one
            return self._pipes[name]


def parse(page: Page, pipe, path: Optional[Path]) -> Parsed:
    """The page as Settings and a checked Recipe, from its recipe TOML text."""
    generate = {**GENERATE_DEFAULTS, **check_generate(page.recipe.get("generate", {}))}
    if "size" not in generate:
        generate["size"] = cli.default_size(pipe, path)
    text = to_toml(Page(page.prompt, page.model, {**page.recipe, "generate": generate}))
    data = tomllib.loads(text)
    try:
        recipe = from_dict(data, "recipe")
    except RecipeError as err:
        raise PageError(section_of(str(err)), str(err)) from err
    for i, entry in enumerate(data.get("lora", [])):
        for key in ("path", "blend"):
            if key in entry and not Path(str(entry[key])).expanduser().is_file():
                raise PageError(
                    f"lora.{key}", f"lora[{i}].{key}: no such file {entry[key]}"
                )
    g = data["generate"]
    try:
        settings = cli.settings_from(page.prompt, g, g["size"])
        cli.latent_for(pipe, settings.size)
    except cli.CliError as err:
        text = str(err)
        for prefix, field in (
            ("prompt", "prompt"),
            ("weights_mode", "generate.weights_mode"),
        ):
            if text.startswith(prefix):
                raise PageError(field, text.split(":", 1)[1].strip()) from err
        raise PageError("generate.size", str(err).removeprefix("--size ")) from err
    return Parsed(settings, recipe, text, data)


@contextmanager
def stepping(pipe, on_step: Callable[[int, int], None], total: int):
    """Report each denoising step and let on_step raise Cancelled between steps.

    Wraps the pipeline's ``generate_latents`` on the instance for the block's
    duration; the steps themselves are upstream's, unchanged.
    """
    original = pipe.generate_latents

    def generate_latents(*args, **kwargs):
        for i, x in enumerate(original(*args, **kwargs)):
            yield x
            on_step(i + 1, kwargs.get("num_steps", total))

    pipe.generate_latents = generate_latents
    try:
        yield
    finally:
        del pipe.generate_latents


def technique_image(pipe, parsed: Parsed) -> Tuple[np.ndarray, List[str]]:
    """The image ``pulse generate --recipe`` writes for this recipe, and its lines."""
    if parsed.recipe.empty:
        return cli.generate(pipe, parsed.settings), []
    return cli.generate_with(pipe, parsed.settings, parsed.recipe)


def baseline_settings(parsed: Parsed) -> cli.Settings:
    """The settings without techniques (bendable words lose their parentheses)."""
    return cli.baseline_settings(parsed.settings, parsed.recipe)


def baseline_image(pipe, parsed: Parsed) -> np.ndarray:
    """The same settings without techniques (``pulse generate --compare``'s baseline)."""
    return cli.generate(pipe, baseline_settings(parsed))


def png_url(image: np.ndarray) -> str:
    """A uint8 (H, W, 3) image as a PNG data URL (the exact pixels)."""
    from PIL import Image

    return pil_url(Image.fromarray(image))


def pil_url(img) -> str:
    """A Pillow image as a PNG data URL."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def with_steps(parsed: Parsed, steps: int) -> Parsed:
    """The same recipe at another step count (a low-step preview)."""
    return replace(parsed, settings=replace(parsed.settings, steps=steps))


def attention(pipe, parsed: Parsed, blocks: str) -> Dict[str, Any]:
    """Capture the recipe's render (``pulse generate --capture``) and return per-step word maps.

    Each map is drawn over the image in the gallery's colour map, scaled to its
    own min..max; one colour bar serves them all.
    """
    from ..capture import gallery
    from ..colormap import colour_bar

    with tempfile.TemporaryDirectory(prefix="pulse-studio-") as tmp:
        data = {**parsed.data, "capture": [{"dir": tmp, "blocks": blocks}]}
        try:
            recipe = from_dict(data, "recipe")
        except RecipeError as err:
            raise PageError(section_of(str(err)), str(err)) from err
        try:
            image, _ = cli.generate_with(pipe, parsed.settings, recipe)
        except ValueError as err:
            if "blocks" in str(err):
                raise PageError("attention.blocks", str(err)) from err
            raise
        (folder,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        meta = json.loads((folder / "metadata.json").read_text())
        maps = np.load(folder / "maps.npz")["maps"]
    words = [gallery.WordMap(w["text"], tuple(w["positions"])) for w in meta["words"]]
    base = image.astype(np.float32) / 255
    scale = max(1, MAP_PIXELS // base.shape[1])
    base = np.repeat(np.repeat(base, scale, axis=0), scale, axis=1)
    steps = []
    for info, step_maps in zip(meta["steps"], maps):
        tiles = [
            pil_url(gallery.overlay(base, gallery.word_map(step_maps, w)))
            for w in words
        ]
        steps.append(
            {
                "noise_percent": info["noise_percent"],
                "sigma": info["sigma"],
                "maps": tiles,
            }
        )
    return {
        "words": [w.text for w in words],
        "blocks": meta["blocks"],
        "steps": steps,
        "image": png_url(image),
        "colour_bar": pil_url(colour_bar(base.shape[1] * 2, gallery.BAR_LABELS)),
    }
