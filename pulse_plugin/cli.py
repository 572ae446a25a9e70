"""The ``pulse`` command: generate with techniques, run the demo gallery, list blocks."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from . import blas
from .recipe import PULSE_SECTIONS, Recipe, RecipeError

DESCRIPTION = """\
CorePulse-style control for MLX Stable Diffusion.

  pulse demo                         every technique on the bundled toy model -> pulse-demo/index.html
  pulse generate "a red circle on the left" --inject block=all,prompt=blue --compare
  pulse generate PROMPT --recipe recipe.toml --capture gallery/
  pulse blocks                       the model's attention sites and their selector names
  pulse studio                       every technique in a local web page, with live preview

Models: the bundled toy model (default), any local diffusers-layout folder
(--model PATH), or an upstream model name where its weights can be had.
On Linux the command re-runs itself with Debian's OpenBLAS preloaded when it is
installed (set PULSE_NO_OPENBLAS=1 to opt out).
"""


class CliError(Exception):
    """Bad input on the command line or in a file it names."""


# ------------------------------------------------------------------ models
def load_model(name: Optional[str]):
    """The pipeline for --model: 'toy' (default), a local folder, or an upstream model name."""
    from . import upstream
    from .toy import default_model_path, folder

    sd = upstream.load(patched=True)
    if name in (None, "toy"):
        path = default_model_path()
        if not folder.is_model_folder(path):
            raise CliError(f"the bundled toy model is missing from {path}")
        return folder.load_pipeline(path, sd), path
    path = Path(name).expanduser()
    if path.exists():
        if not folder.is_model_folder(path):
            raise CliError(
                f"--model {name}: not a diffusers-layout folder (expected unet/, text_encoder/, vae/)"
            )
        return folder.load_pipeline(path, sd), path
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


def latent_for(pipe, size: int) -> Tuple[int, int]:
    from .toy.folder import downsampling

    down = downsampling(pipe)
    if size % down:
        raise CliError(f"--size {size}: expected a multiple of {down} for this model")
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

    def __post_init__(self):
        if not self.prompt.strip():
            raise CliError("prompt: expected some text")
        if self.steps < 1:
            raise CliError(f"--steps {self.steps}: expected at least 1")
        if self.size < 8:
            raise CliError(f"--size {self.size}: expected at least 8 pixels")


def generate(pipe, s: Settings, label: str = "generate"):
    """One image as uint8 (H, W, 3), with a progress bar over the denoising steps."""
    import numpy as np
    from tqdm import tqdm

    from .sampling import final_latents, to_uint8

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
    return to_uint8(np.array(pipe.decode(x)[0]))


def generate_with(pipe, s: Settings, recipe: Recipe, label: str = "with techniques"):
    """Generate with the recipe's techniques active; returns (image, one line per technique).

    Attention techniques, bends and capture share one Pulse, so they compose on
    each site; LoRA adapters are applied for this generation only.
    """
    from .pulse import Pulse
    from .recipe import apply_to

    bends = bending_settings(recipe)
    clean = baseline_settings(s, recipe)
    prompt = clean.prompt
    with Pulse(pipe, prompt=prompt, num_steps=s.steps) as pulse:
        done = apply_to(pulse, recipe)
        bender = None
        if bends is not None:
            from .bending.processor import Bender

            bender = Bender(pipe, s.prompt, bends).attach(pulse)
            phase = "apply" if bends.apply_to_output else "visualise only"
            done += [f"bend ({phase}): {b.label}" for b in bends.bends]
        with loras_applied(pipe, recipe, done):
            image = _generate_or_capture(pipe, clean, recipe, label, done)
        if bender is not None:
            bender.flush()
    return image, done


def baseline_settings(s: Settings, recipe: Recipe) -> Settings:
    """The settings without techniques: bendable words lose their parentheses."""
    if not recipe.techniques.get("bend"):
        return s
    from .bending.config import parse_prompt

    return replace(s, prompt=parse_prompt(s.prompt)[0])


def bending_settings(recipe: Recipe):
    """The recipe's bends: a settings file (``file``) and/or inline bend tables."""
    entries = recipe.techniques.get("bend", [])
    if not entries:
        return None
    from .bending.config import BendingSettings, bend_from_dict, load_settings

    settings = BendingSettings([], apply_to_output=True)
    for i, entry in enumerate(entries):
        if "file" in entry:
            if set(entry) != {"file"}:
                raise RecipeError(f"bend[{i}]: a bend with 'file' takes no other field")
            loaded = load_settings(entry["file"])
            settings.bends += loaded.bends
            settings.apply_to_output = loaded.apply_to_output
        else:
            settings.bends.append(bend_from_dict(entry, f"bend[{i}]."))
    return settings


def _generate_or_capture(
    pipe, s: Settings, recipe: Recipe, label: str, done: List[str]
):
    entries = recipe.techniques.get("capture", [])
    if not entries:
        return generate(pipe, s, label)
    from .capture.gallery import capture_run

    if len(entries) > 1 or set(entries[0]) - {"dir", "blocks"}:
        raise RecipeError(
            "capture: expected one table with fields dir and optional blocks"
        )
    result = capture_run(
        pipe,
        s.prompt,
        entries[0].get("dir", "pulse-capture"),
        num_steps=s.steps,
        cfg_weight=s.cfg,
        latent_size=latent_for(pipe, s.size),
        seed=s.seed,
        negative_text=s.negative,
        blocks=entries[0].get("blocks"),
    )
    done.append(f"capture: {result.folder}/index.html")
    return (result.image * 255).round().astype("uint8")


@contextmanager
def loras_applied(pipe, recipe: Recipe, done: List[str]):
    """The recipe's LoRA adapters and blends, applied for the block's duration."""
    entries = recipe.techniques.get("lora", [])
    if not entries:
        yield
        return
    from .lora import adapters, blend, io

    loras, weights = [], []
    for i, entry in enumerate(entries):
        if "blend" in entry:
            if set(entry) != {"blend"}:
                raise RecipeError(f"lora[{i}]: a blend entry takes no other field")
            b = blend.load_blend(entry["blend"])
            loras += blend.blend_loras(b)
            weights += b.effective_weights()
            done.append(
                f"lora blend {b.name}: {dict(zip(b.adapter_names(), b.effective_weights()))}"
            )
            continue
        if "path" not in entry or set(entry) - {"path", "weight"}:
            raise RecipeError(f"lora[{i}]: expected fields path and optional weight")
        loras.append(io.load_lora(entry["path"]))
        weights.append(float(entry.get("weight", 1.0)))
        done.append(f"lora: {entry['path']} weight {weights[-1]}")
    adapters.apply(pipe, loras, weights)
    try:
        yield
    finally:
        adapters.remove(pipe)


# ---------------------------------------------------------------- pictures
def display_scale(size: int) -> int:
    """Nearest-neighbour upscale that makes an image at least 128 px wide."""
    return max(1, 128 // size)


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
    canvas = Image.new("RGB", (w * len(tiles), h + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        canvas.paste(tile, (i * w, 16))
        draw.text((i * w + 3, 2), label[: max(4, w // 6)], fill="black")
    return canvas


def save_png(image, path: Path, scale: int = 1) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    pil.save(path)
    return path


# ------------------------------------------------------------- subcommands
def build_recipe(args) -> Recipe:
    from . import recipe as recipes

    rec = recipes.load(Path(args.recipe)) if args.recipe else Recipe()
    for section in PULSE_SECTIONS:
        for text in getattr(args, section) or []:
            rec.add(section, recipes.parse_flag(section, text))
    for path in args.bend or []:
        rec.add("bend", {"file": path})
    if args.capture:
        rec.techniques["capture"] = [{"dir": args.capture}]
    for path in args.blend or []:
        rec.add("lora", {"blend": path})
    for text in args.lora or []:
        path, _, weight = text.partition(":")
        try:
            rec.add("lora", {"path": path, "weight": float(weight or 1.0)})
        except ValueError as err:
            raise CliError(f"--lora {text}: expected PATH or PATH:WEIGHT") from err
    return rec


def cmd_generate(args) -> int:
    pipe, path = load_model(args.model)
    rec = build_recipe(args)
    gen = rec.generate

    def pick(value, key, default):
        return value if value is not None else gen.get(key, default)

    s = Settings(
        prompt=args.prompt,
        negative=pick(args.negative, "negative", ""),
        steps=pick(args.steps, "steps", 20),
        cfg=pick(args.cfg, "cfg", 7.5),
        seed=pick(args.seed, "seed", 0),
        size=pick(args.size, "size", None) or default_size(pipe, path),
    )
    out = Path(args.output)
    if rec.empty:
        image, done = generate(pipe, s), []
    else:
        image, done = generate_with(pipe, s, rec)
    save_png(image, out, args.scale)
    print(f"wrote {out}")
    for line in done:
        print(f"  {line}")
    if args.compare:
        base = generate(pipe, baseline_settings(s, rec), "baseline")
        grid = side_by_side(
            [base, image], ["baseline", "with techniques"], scale=display_scale(s.size)
        )
        compare = out.with_name(out.stem + "-compare.png")
        grid.save(compare)
        print(f"wrote {compare}")
    return 0


def cmd_blocks(args) -> int:
    from .selectors import describe, table

    pipe, _ = load_model(args.model)
    print(table(describe(pipe.unet)))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .toy import default_model_path

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
    g.add_argument(
        "--model",
        help="'toy' (default), a diffusers-layout folder, or an upstream model name",
    )
    g.add_argument("--negative", help="negative prompt (default: empty)")
    g.add_argument("--steps", type=int, help="denoising steps (default 20)")
    g.add_argument(
        "--cfg", type=float, help="classifier-free guidance weight (default 7.5)"
    )
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument(
        "--size", type=int, help="image size in pixels (default: the model's)"
    )
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
        default=40,
        help="train the demo's recolouring LoRA this many steps on the toy model (0: skip)",
    )
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser(
        "blocks", help="list the model's attention sites and selector names"
    )
    b.add_argument("--model", help="'toy' (default) or a diffusers-layout folder")
    b.set_defaults(func=cmd_blocks)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:
        blas.reexec_with_openblas("pulse_plugin.cli")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        CliError,
        ValueError,
        FileNotFoundError,
    ) as err:  # RecipeError, LoRAError, ...
        print(f"pulse: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
