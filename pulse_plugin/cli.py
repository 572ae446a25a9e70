"""The ``pulse`` command: generate with techniques, run the demo gallery, list blocks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import blas, checks
from .recipe import (
    GENERATE_FIELDS,
    PULSE_SECTIONS,
    Capture,
    Recipe,
    generate_entry,
)

DESCRIPTION = """\
CorePulse-style control for MLX Stable Diffusion.

  pulse demo                         every technique on the bundled toy model -> pulse-demo/index.html
  pulse generate "a red circle on the left" --inject block=all,prompt=blue --compare
  pulse generate PROMPT --recipe recipe.toml --capture gallery/
  pulse edit "a red circle on the left" "a blue circle on the left" --compare
  pulse blocks                       the model's attention sites and their selector names
  pulse studio                       every technique in a local web page, with live preview

Models: the bundled toy model (default), any local diffusers-layout folder or
single-file checkpoint (--model PATH), or an upstream model name where its
weights can be had.
On Linux the command re-runs itself with Debian's OpenBLAS preloaded when it is
installed (set PULSE_NO_OPENBLAS=1 to opt out).
"""


class CliError(Exception):
    """Bad input on the command line or in a file it names."""


# ------------------------------------------------------------------ models
def load_model(
    name: Optional[str], config: Optional[str] = None, tokenizer: Optional[str] = None
):
    """The pipeline for --model: 'toy' (default), a local folder or single file, or an upstream name.

    Returns (pipe, folder): the folder whose vae config gives the default size, if any.
    """
    from . import models, upstream
    from .toy import default_model_path

    sd = upstream.load(patched=True)
    if name in (None, "toy"):
        path = default_model_path()
        if not models.is_model_folder(path):
            raise CliError(f"the bundled toy model is missing from {path}")
        name = str(path)
    path = Path(name).expanduser()
    if path.exists():
        if not models.is_model_path(path):
            raise CliError(
                f"--model {name}: not a diffusers-layout folder (unet/, text_encoder/, "
                "vae/) nor a single-file .safetensors checkpoint"
            )
        try:
            pipe = models.load_pipeline(path, sd, config=config, tokenizer=tokenizer)
        except models.LOAD_ERRORS as err:
            raise CliError(f"--model {name}: {err}") from err
        return pipe, (path if path.is_dir() else config and Path(config))
    if config or tokenizer:
        raise CliError(
            "--model-config and --tokenizer apply to single-file checkpoints only"
        )
    try:
        cls = sd.StableDiffusionXL if "xl" in name.lower() else sd.StableDiffusion
        return cls(name), None
    except Exception as err:  # hub errors come in many types; say what was tried
        raise CliError(
            f"--model {name}: not a local folder, and upstream could not load it "
            f"({type(err).__name__}: {err}). Download the model as a diffusers folder "
            "and pass its path."
        ) from err


def default_size(pipe, path: Optional[Path]) -> int:
    if path is not None and (path / "vae" / "config.json").is_file():
        return int(
            json.loads((path / "vae" / "config.json").read_text())["sample_size"]
        )
    return 512


def size_multiple(pipe) -> int:
    """Image sides this model takes are multiples of this (autoencoder x UNet halvings)."""
    from .models import downsampling
    from .sampling import unet_multiple

    return downsampling(pipe) * unet_multiple(pipe)


def latent_for(pipe, size: int, name: str = "--size") -> Tuple[int, int]:
    """The latent (H, W) for a square image of size pixels; CliError naming the multiple."""
    from .models import downsampling

    m = size_multiple(pipe)
    if size < m or size % m:
        below, above = max(m, size // m * m), max(m, -(-size // m) * m)
        near = f"{below}" if below == above else f"{below} or {above}"
        raise CliError(
            f"{name} {size}: this model takes sizes that are multiples of {m} "
            f"(at least {m}); try {near}"
        )
    down = downsampling(pipe)
    return (size // down, size // down)


# -------------------------------------------------------------- generation
@dataclass
class Settings:
    prompt: str
    negative: str = ""
    steps: int = 20
    cfg: float = 7.5
    seed: int = 0
    size: int = 32
    weights: Optional[str] = None  # prompt-weighting syntax: "a1111" or "compel"
    weights_mode: str = "attention"

    def __post_init__(self):
        if not self.prompt.strip():
            raise CliError("prompt: expected some text")
        if self.steps < 1:
            raise CliError(f"--steps {self.steps}: expected at least 1")


def generate(pipe, s: Settings, label: str = "generate"):
    """One image as uint8 (H, W, 3), with a progress bar over the denoising steps."""
    from tqdm import tqdm

    from .sampling import decode, final_latents, to_uint8

    x = final_latents(
        pipe,
        s.prompt,
        num_steps=s.steps,
        cfg_weight=s.cfg,
        negative_text=s.negative,
        latent_size=latent_for(pipe, s.size),
        seed=s.seed,
        progress=lambda steps: tqdm(
            steps, total=s.steps, desc=label, leave=False, file=sys.stderr
        ),
    )
    return to_uint8(decode(pipe, x)[0])


def generate_with(pipe, s: Settings, recipe: Recipe, label: str = "with techniques"):
    """Generate with the recipe's techniques active; returns (image, one line per technique).

    Attention techniques, bends and capture share one Pulse, so they compose on
    each site; LoRA adapters are applied for this generation only.
    """
    from .pulse import Pulse
    from .recipe import apply_to

    bends = recipe.bending
    clean = baseline_settings(s, recipe)
    prompt = clean.prompt
    with Pulse(pipe, prompt=prompt, num_steps=s.steps) as pulse:
        done = apply_to(pulse, recipe)
        if s.weights is not None:
            pulse.prompt_weights(s.prompt, s.weights, s.weights_mode)
            done.append(f"prompt weights ({s.weights}, on {s.weights_mode})")
        bender = None
        if bends is not None:
            from .bending.processor import Bender

            bender = Bender(pipe, s.prompt, bends).attach(pulse)
            phase = "apply" if bends.apply_to_output else "visualise only"
            done += [f"bend ({phase}): {b.label}" for b in bends.bends]
        with loras_applied(pipe, recipe, done):
            image = _generate_or_capture(pipe, clean, recipe, label, done, bender)
        if bender is not None:
            bender.flush()
    return image, done


def baseline_settings(s: Settings, recipe: Recipe) -> Settings:
    """The settings without techniques: bend or weight marks removed from the prompt."""
    if s.weights is not None:
        if recipe.bending is not None:
            raise CliError(
                "--weights: the prompt-weighting syntax and bends both mark words with"
                " parentheses; use one of them"
            )
        from .prompt_weights import parse

        return replace(s, prompt=parse(s.prompt, s.weights).text, weights=None)
    if recipe.bending is None:
        return s
    from .bending.config import parse_prompt

    return replace(s, prompt=parse_prompt(s.prompt)[0])


def bending_settings(recipe: Recipe):
    """The recipe's bends (BendingSettings), or None."""
    return recipe.bending


def _generate_or_capture(
    pipe, s: Settings, recipe: Recipe, label: str, done: List[str], bender=None
):
    capture = recipe.capture
    if capture is None:
        return generate(pipe, s, label)
    from .capture.gallery import capture_run

    result = capture_run(
        pipe,
        s.prompt,
        capture.dir,
        num_steps=s.steps,
        cfg_weight=s.cfg,
        latent_size=latent_for(pipe, s.size),
        seed=s.seed,
        negative_text=s.negative,
        blocks=capture.blocks,
        bends=bender,
    )
    done.append(f"capture: {result.folder.parent / 'index.html'} (run {result.folder})")
    return (result.image * 255).round().astype("uint8")


@contextmanager
def loras_applied(pipe, recipe: Recipe, done: List[str]):
    """The recipe's LoRA adapters and blends, applied for the block's duration."""
    if not recipe.loras:
        yield
        return
    from .lora import adapters, blend, io
    from .recipe import BlendFile

    loras, weights = [], []
    for entry in recipe.loras:
        if isinstance(entry, BlendFile):
            b = blend.load_blend(entry.path)
            loras += blend.blend_loras(b)
            weights += b.effective_weights()
            done.append(
                f"lora blend {b.name}: {dict(zip(b.adapter_names(), b.effective_weights()))}"
            )
            continue
        loras.append(io.load_lora(entry.path))
        weights.append(entry.weight)
        done.append(f"lora: {entry.path} weight {entry.weight}")
    adapters.apply(pipe, loras, weights)
    try:
        yield
    finally:
        adapters.remove(pipe)


# ---------------------------------------------------------------- pictures
def display_scale(size: int) -> int:
    """Nearest-neighbour upscale that makes an image at least 128 px wide."""
    return max(1, 128 // size)


LABEL_BAND = 16  # pixels of label above each picture of side_by_side


def side_by_side(images: Sequence, labels: Sequence[str], scale: int = 4):
    """A labelled row of images, each upscaled (nearest) so small images are visible."""
    from PIL import Image, ImageDraw

    tiles = [
        Image.fromarray(im).resize(
            (im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST
        )
        for im in images
    ]
    w, h = tiles[0].size
    canvas = Image.new("RGB", (w * len(tiles), h + LABEL_BAND), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        canvas.paste(tile, (i * w, LABEL_BAND))
        draw.text((i * w + 3, 2), label[: max(4, w // 6)], fill="black")
    return canvas


def check_folder(folder: Path, name: str, shown: Optional[Path] = None) -> None:
    """CliError unless files can be created in folder (made if missing); nothing is left."""
    shown = folder if shown is None else shown
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"{name} {shown}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".pulse-probe-")
    except OSError as err:
        raise CliError(
            f"{name} {shown}: cannot write in {existing} ({err.strerror or err})"
        ) from err
    os.close(fd)
    os.unlink(probe)


def check_output(path: Path, name: str = "-o") -> None:
    """CliError unless a PNG can be written at path; checked before any generation."""
    if path.suffix.lower() != ".png":
        raise CliError(f"{name} {path}: expected a .png file name")
    if path.is_dir():
        raise CliError(f"{name} {path}: is a folder; expected a .png file name")
    check_folder(path.parent, name, shown=path)


def save_png(image, path: Path, scale: int = 1) -> Path:
    """Write image as a PNG, whole or not at all (a temporary file renamed into place)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_compare(
    out: Path, images: Sequence, labels: Sequence[str], size: int
) -> None:
    """Write OUT-compare.png: the images side by side, labelled, upscaled for display."""
    import numpy as np

    grid = side_by_side(images, labels, scale=display_scale(size))
    compare = out.with_name(out.stem + "-compare.png")
    save_png(np.asarray(grid), compare)
    print(f"wrote {compare}")


# ------------------------------------------------------------- subcommands
def build_recipe(args) -> Recipe:
    """The recipe file (if any) and the technique flags, each checked once."""
    from . import recipe as recipes

    rec = recipes.load(Path(args.recipe)) if args.recipe else Recipe()
    for section in PULSE_SECTIONS:
        flag = "--" + section.replace("_", "-")
        for text in getattr(args, section) or []:
            rec.add(section, recipes.parse_flag(section, text), flag)
    for path in args.bend or []:
        rec.add("bend", {"file": path}, "--bend")
    if args.capture:
        blocks = rec.capture.blocks if rec.capture is not None else None
        rec.capture = Capture(args.capture, blocks)
    for path in args.blend or []:
        rec.add("lora", {"blend": path}, "--blend")
    for text in args.lora or []:
        path, _, weight = text.partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError as err:
            raise CliError(f"--lora {text}: expected PATH or PATH:WEIGHT") from err
        rec.add("lora", {"path": path, "weight": value}, f"--lora {text}")
    return rec


def settings_from(prompt: str, values: Dict[str, Any], size: int) -> Settings:
    """Settings from checked [generate] values; a missing value takes its default."""
    if "weights_mode" in values and "weights" not in values:
        raise CliError(
            f"weights_mode {values['weights_mode']!r}: given without weights; say which"
            " syntax the prompt's weights are written in (--weights, or weights in"
            " [generate])"
        )
    given = {k: values[k] for k in GENERATE_FIELDS if k in values and k != "size"}
    return Settings(prompt=prompt, size=size, **given)


def settings_for(
    args, rec: Recipe, pipe, path, prompt: Optional[str] = None
) -> Settings:
    """The generation settings: flags over the recipe's [generate] over defaults."""
    flags = generate_entry({k: getattr(args, k, None) for k in GENERATE_FIELDS}, "--")
    values = {**rec.generate, **flags}
    text = args.prompt if prompt is None else prompt
    s = settings_from(
        checks.text("prompt", text, empty=False, error=CliError),
        values,
        values["size"] if "size" in values else default_size(pipe, path),
    )
    where = "--size" if "size" in flags else f"{args.recipe}: generate.size"
    latent_for(pipe, s.size, where if "size" in values else "the model's size")
    return s


def cmd_generate(args) -> int:
    out = Path(args.output)
    check_output(out)
    scale = checks.integer("--scale", args.scale, 1, 64, error=CliError)
    rec = build_recipe(args)
    if rec.capture is not None:
        check_folder(Path(rec.capture.dir), "capture dir")
    pipe, path = load_model(args.model, args.model_config, args.tokenizer)
    s = settings_for(args, rec, pipe, path)
    if rec.empty and s.weights is None:
        image, done = generate(pipe, s), []
    else:
        image, done = generate_with(pipe, s, rec)
    if args.compare:
        base = generate(pipe, baseline_settings(s, rec), "baseline")
    save_png(image, out, scale)
    print(f"wrote {out}")
    for line in done:
        print(f"  {line}")
    if args.compare:
        write_compare(out, [base, image], ["baseline", "with techniques"], s.size)
    return 0


def _pairs(flag: str, items: Sequence[str]) -> dict:
    """WORD=SCALE items as {word: scale}."""
    out = {}
    for item in items or []:
        word, sep, value = item.rpartition("=")
        if not sep or not word.strip():
            raise CliError(f"{flag} {item}: expected WORD=SCALE")
        out[word.strip()] = checks.number(f"{flag} {item}", _float(flag, value), 0.0)
    return out


def _float(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError as err:
        raise CliError(f"{flag}: expected a number, got {text!r}") from err


def _window(flag: str, text: Optional[str]) -> Optional[Tuple]:
    """START:END sigmas (either may be empty) as a pair, or None."""
    if text is None:
        return None
    start, sep, end = text.partition(":")
    if not sep:
        raise CliError(
            f"{flag} {text}: expected START:END sigmas (either may be empty)"
        )
    return tuple(
        checks.number(f"{flag} {text}", _float(flag, v), 0.0) if v.strip() else None
        for v in (start, end)
    )


def edit_images(pipe, s: Settings, edit: str, **options):
    """Prompt-to-prompt: (source image, edited image) as uint8 from one batch.

    ``s.prompt`` is the source; ``options`` are ``Pulse.prompt_to_prompt``'s.
    """
    from tqdm import tqdm

    from .pulse import Pulse
    from .sampling import decode, final_latents, to_uint8

    with Pulse(pipe, num_steps=s.steps) as pulse:
        pair = pulse.prompt_to_prompt(s.prompt, edit, **options)
        x = final_latents(
            pipe,
            pair.source,
            n_images=2,
            num_steps=s.steps,
            cfg_weight=s.cfg,
            negative_text=s.negative,
            latent_size=latent_for(pipe, s.size),
            seed=s.seed,
            progress=lambda steps: tqdm(
                steps, total=s.steps, desc="edit", leave=False, file=sys.stderr
            ),
        )
    source, edited = (to_uint8(image) for image in decode(pipe, x))
    return source, edited


def edit_options(args) -> Dict[str, Any]:
    """pulse edit's flags as ``Pulse.prompt_to_prompt``'s keyword arguments, checked."""
    cross = _window("--window", args.window) or (None, None)
    return dict(
        mode=args.mode,
        block=args.block,
        sigma_start=cross[0],
        sigma_end=cross[1],
        reweight=_pairs("--reweight", args.reweight) or None,
        self_window=_window("--self-window", args.self_window),
        local_blend=args.local_blend,
        blend_window=_window("--blend-window", args.blend_window) or (None, None),
        threshold=args.threshold,
    )


def cmd_edit(args) -> int:
    """Prompt-to-prompt: the source and the edit in one batch; -o is the edit."""
    out = Path(args.output)
    check_output(out)
    options = edit_options(args)
    pipe, path = load_model(args.model, args.model_config, args.tokenizer)
    args.recipe = None
    s = settings_for(args, Recipe(), pipe, path, prompt=args.source)
    checks.text("edit", args.edit, empty=False, error=CliError)
    source, edited = edit_images(pipe, s, args.edit, **options)
    save_png(edited, out, args.scale)
    print(f"wrote {out} (the edit of {args.source!r} into {args.edit!r})")
    if args.compare:
        write_compare(out, [source, edited], ["source", "edit"], s.size)
    return 0


def cmd_blocks(args) -> int:
    from .selectors import describe, selector_table, table

    pipe, _ = load_model(args.model)
    sites = describe(pipe.unet)
    print(
        "Attention sites in execution order, by CorePulse name (level 0 = the latent's"
    )
    print("own resolution); each name and each upstream id is a selector:\n")
    print(table(sites))
    print(
        "\nMore selectors (a block= value may also be a list of them, their union):\n"
    )
    print(selector_table(sites))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .toy import default_model_path

    generate_entry({"steps": args.steps, "seed": args.seed}, "--")
    checks.optional(checks.integer, "--lora-steps", args.lora_steps, 0, error=CliError)
    check_folder(Path(args.out), "--out")
    pipe, path = load_model(args.model)
    size = default_size(pipe, path)
    index = run_demo(
        pipe,
        Path(args.out),
        size,
        steps=args.steps,
        seed=args.seed,
        lora_steps=args.lora_steps if path == default_model_path() else 0,
    )
    print(f"wrote {index}")
    return 0


GENERATION_FLAGS = (
    (
        "--model",
        str,
        "'toy' (default), a diffusers-layout folder, a single-file .safetensors "
        "checkpoint (A1111/ComfyUI), or an upstream model name",
    ),
    (
        "--model-config",
        str,
        "for a single file: a diffusers folder of its configs and tokenizers "
        "(no weights needed)",
    ),
    ("--tokenizer", str, "for a single file: a CLIP tokenizer folder"),
    ("--negative", str, "negative prompt (default: empty)"),
    ("--steps", int, "denoising steps (default 20)"),
    ("--cfg", float, "classifier-free guidance weight (default 7.5)"),
    ("--seed", int, "random seed (default 0)"),
    ("--size", int, "image size in pixels (default: the model's)"),
)


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """The model and generation settings pulse generate and pulse edit share."""
    for name, kind, helptext in GENERATION_FLAGS:
        parser.add_argument(name, type=kind, help=helptext)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulse",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from .studio.command import add_parser as add_studio

    add_studio(sub)

    g = sub.add_parser(
        "generate",
        help="generate an image, optionally with techniques",
        description="Generate one image. Techniques come from --recipe (TOML/JSON) and/or flags; "
        "each technique flag takes key=value pairs, the keyword arguments of the matching "
        "Pulse method (see docs/techniques.md), and may be repeated.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("prompt", help="the text prompt")
    add_generation_flags(g)
    g.add_argument(
        "--recipe", help="TOML or JSON file of techniques (see pulse_plugin/recipe.py)"
    )
    g.add_argument(
        "--inject", action="append", help="e.g. block=structure,prompt=blue,weight=0.8"
    )
    g.add_argument("--reweight", action="append", help="e.g. phrase=red,scale=2")
    g.add_argument(
        "--mask",
        action="append",
        help="e.g. phrase=red (remove the phrase's influence)",
    )
    g.add_argument(
        "--keep-only", dest="keep_only", action="append", help='e.g. phrases=["circle"]'
    )
    g.add_argument(
        "--region", action="append", help="e.g. prompt=blue,mask=left,weight=1"
    )
    g.add_argument(
        "--self-attention",
        dest="self_attention",
        action="append",
        help="e.g. query_region=left,key_region=right,scale=2",
    )
    g.add_argument(
        "--pag",
        action="append",
        help="perturbed-attention guidance, e.g. scale=3,block=mid",
    )
    g.add_argument(
        "--weights",
        choices=("a1111", "compel"),
        help="read weights written in the prompt: A1111's (word:1.4) or compel's word+",
    )
    g.add_argument(
        "--weights-mode",
        dest="weights_mode",
        choices=("attention", "embedding"),
        help="what the weights scale: attention probabilities (default) or, as A1111,"
        " token embeddings",
    )
    g.add_argument(
        "--bend",
        action="append",
        help="attention-bending settings (TOML/JSON/YAML, see examples/bending.toml); "
        "mark bendable words in the prompt with parentheses",
    )
    g.add_argument(
        "--capture",
        metavar="DIR",
        help="record the attention maps into a gallery under DIR",
    )
    g.add_argument(
        "--lora", action="append", help="LoRA .safetensors, as PATH or PATH:WEIGHT"
    )
    g.add_argument("--blend", action="append", help="a LoRA blend file (JSON/TOML)")
    g.add_argument(
        "--compare",
        action="store_true",
        help="also write a baseline | technique picture",
    )
    g.add_argument(
        "--scale",
        type=int,
        default=1,
        help="upscale saved images by this factor (nearest)",
    )
    g.add_argument(
        "-o",
        "--output",
        default="pulse-out.png",
        help="output PNG (default pulse-out.png)",
    )
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser(
        "demo",
        help="run every technique on the toy model and write a gallery",
        description="Run every technique on the model (the bundled toy model by default) with "
        "a fixed seed, and write one before/after picture per technique and an index.html.",
    )
    d.add_argument(
        "--out", default="pulse-demo", help="output folder (default pulse-demo)"
    )
    d.add_argument("--model", help="'toy' (default) or a diffusers-layout folder")
    d.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument(
        "--lora-steps",
        type=int,
        default=None,
        help="train the demo's recolouring LoRA this many steps on the toy model "
        "(default 150; 0: skip)",
    )
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser(
        "edit",
        help="prompt-to-prompt: edit SOURCE into EDIT keeping its layout",
        description="Generate SOURCE and EDIT in one batch from the same noise; the edit takes "
        "the source's cross-attention maps for the tokens they share (docs/techniques.md, "
        "prompt-to-prompt). -o is the edited image; --compare also writes source | edit.",
    )
    e.add_argument("source", help="the source prompt")
    e.add_argument("edit", help="the edited prompt")
    e.add_argument(
        "--mode",
        default="replace",
        choices=("replace", "refine", "reweight"),
        help="replace: a word swapped (same token count); refine: words added or removed;"
        " reweight: with --reweight WORD=SCALE",
    )
    e.add_argument("--block", default="all", help="sites whose maps are shared")
    e.add_argument(
        "--window", help="sigma window START:END of the sharing (default all)"
    )
    e.add_argument(
        "--self-window",
        help="also share self-attention maps in this sigma window START:END",
    )
    e.add_argument(
        "--reweight", action="append", help="WORD=SCALE (mode reweight), repeatable"
    )
    e.add_argument(
        "--local-blend",
        action="append",
        help="keep the image outside this word's attention the source's (repeatable)",
    )
    e.add_argument("--blend-window", help="sigma window START:END of the local blend")
    e.add_argument(
        "--threshold", type=float, default=0.3, help="local blend's mask threshold"
    )
    add_generation_flags(e)
    e.add_argument("--compare", action="store_true", help="also write source | edit")
    e.add_argument("--scale", type=int, default=1, help="upscale saved images")
    e.add_argument("-o", "--output", default="pulse-edit.png", help="the edited image")
    e.set_defaults(func=cmd_edit)

    b = sub.add_parser(
        "blocks", help="list the model's attention sites and selector names"
    )
    b.add_argument("--model", help="'toy' (default) or a diffusers-layout folder")
    b.set_defaults(func=cmd_blocks)

    from .lora import train as lora_train

    t = sub.add_parser(
        "train-lora",
        help="train a LoRA on a folder of captioned images",
        description="Train a LoRA (attention layers by default) on a folder of image + "
        "caption files, on the toy model (default), a diffusers-layout folder or a "
        "single-file checkpoint; the file it writes loads with pulse generate --lora.",
    )
    lora_train.add_arguments(t)
    t.set_defaults(func=lora_train.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:
        blas.reexec_with_openblas("pulse_plugin.cli")
    from .pulse import PulseError
    from .sampling import NonFiniteError
    from .upstream import UpstreamError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ValueError, PulseError, NonFiniteError, UpstreamError) as err:
        print(f"pulse: error: {err}", file=sys.stderr)  # RecipeError, LoRAError, ...
        return 2
    except OSError as err:  # a file named on the command line or in a recipe
        where = f"{err.filename}: " if err.filename else ""
        print(f"pulse: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pulse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
