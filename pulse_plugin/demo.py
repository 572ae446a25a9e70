"""``pulse demo``: every technique on one model, before and after, in an HTML gallery.

Each panel is the baseline and one or more pictures with a technique, at the
same seed; ``tests/test_demo.py`` measures on the toy model that every panel
shows what its text says. Every picture's recipe is written beside it as JSON
(``pulse generate PROMPT --recipe NAME.json`` in the folder redraws it).
"""

from __future__ import annotations

import copy
import html
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .recipe import from_dict

DISPLAY_WIDTH = 256  # each picture is upscaled (nearest) to at least this many pixels
LORA_STEPS = 150  # the demo's recolouring LoRA (pulse_plugin.toy.effects recipe)
LORA_LR = 1e-3
LORA_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
LORA_FILE = "recolour-lora.safetensors"


@dataclass
class Demo:
    """One panel: a prompt, the baseline and each (label, recipe) variant beside it."""

    name: str
    title: str
    prompt: str
    what: str
    recipe: Dict[str, Any] = field(default_factory=dict)
    variants: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    difference: bool = False  # also show |variant - baseline| x DIFF_GAIN

    def panels(self) -> List[Tuple[str, Dict[str, Any]]]:
        """(label, recipe) of each picture after the baseline."""
        return self.variants or [(self.name, self.recipe)]


DIFF_GAIN = 4


def _bends(mode: str, words, **kw) -> Dict[str, Any]:
    return {"bend": [{"token": t, "mode": mode, **kw} for t in words]}


DEMOS: List[Demo] = [
    Demo(
        "injection",
        "Prompt injection, all blocks",
        "a red circle",
        "The prompt 'a blue circle' replaces the conditioning of every cross-attention site "
        "(weight 1: out = (1 - w) * base + w * injected) over the whole sigma range: the red "
        "circle is drawn blue.",
        {"inject": [{"block": "all", "prompt": "a blue circle", "weight": 1.0}]},
    ),
    Demo(
        "injection-window",
        "Prompt injection, late (low-sigma) steps only",
        "a red circle",
        "'a blue square' injected only while sigma is below a bound (of 20 steps from sigma "
        "14.6): below 2 (the last 11 steps) the red circle turns blue but keeps no clear "
        "outline, a blob with stray specks (middle); below 9 (all but the first 2 steps) "
        "it becomes a blue square (right): on the toy model late steps still set the "
        "colour, the outline is settled earlier.",
        variants=[
            (
                f"sigma < {bound:g}",
                {
                    "inject": [
                        {
                            "block": "all",
                            "prompt": "a blue square",
                            "sigma_start": bound,
                            "sigma_end": 0.0,
                        }
                    ]
                },
            )
            for bound in (2.0, 9.0)
        ],
    ),
    Demo(
        "multi-scale",
        "Multi-scale: structure level vs detail level",
        "a red circle",
        "'a green square' injected at the lowest-resolution (structure) sites only keeps "
        "the colour but moves the layout on the toy model: the red circle is drawn right "
        "of centre, reshaped (middle); at the highest-resolution (detail) sites only, it "
        "becomes a green square in place (right): this model settles colour and outline at "
        "the detail level.",
        variants=[
            (
                "structure",
                {"inject": [{"block": "structure", "prompt": "a green square"}]},
            ),
            ("detail", {"inject": [{"block": "detail", "prompt": "a green square"}]}),
        ],
    ),
    Demo(
        "reweight",
        "Token re-weighting",
        "a blue red circle on the left",
        "A caption naming two colours confuses the toy model: it draws a red circle on the "
        "left and more objects below it. With attention to 'red' scaled by 0.05 "
        "(probabilities renormalised) on every site, it draws one blue circle on the left.",
        {"reweight": [{"phrase": "red", "scale": 0.05}]},
    ),
    Demo(
        "mask",
        "Token masking",
        "a blue circle on the left",
        "'blue' gets attention probability 0 everywhere; the rest of the prompt stays, "
        "so the circle takes the colour this model draws when none is named (red).",
        {"mask": [{"phrase": "blue"}]},
    ),
    Demo(
        "regional",
        "Regional injection",
        "a red circle on the left and a red square on the right",
        "'a blue circle on the left and a blue square on the right' only in the left half "
        "(mask area-resized to each block): the left object turns from red to blue, the "
        "right one stays red.",
        {
            "region": [
                {
                    "prompt": "a blue circle on the left and a blue square on the right",
                    "mask": "left",
                    "weight": 1.0,
                }
            ]
        },
    ),
    Demo(
        "bend-flip",
        "Attention bending: flip",
        "a (red) (circle) on the (left)",
        "The cross-attention maps of the object's words are flipped left-right at every site "
        "(apply phase, strength 1, renormalised). On the toy model this does not move the "
        "circle: it stays on the left and a second, greenish blob appears on the right "
        "(translate, next, moves it).",
        _bends("flip", ("red", "circle", "left"), flip="horizontal"),
    ),
    Demo(
        "bend-translate",
        "Attention bending: translate",
        "a (red) (circle) on the (left)",
        "The maps of the object's words are shifted right by half the map's width: the "
        "circle is drawn on the right.",
        _bends("translate", ("red", "circle", "left"), dx=0.5),
    ),
    Demo(
        "bend-regional-mask",
        "Attention bending: regional mask",
        "a (red) (circle)",
        "A caption with no position word (drawn in the centre here); the maps of 'red' and "
        "'circle' are kept in the left half only, and the circle moves left.",
        _bends("regional_mask", ("red", "circle"), region=[0.0, 0.0, 0.5, 1.0]),
    ),
    Demo(
        "capture",
        "Attention capture",
        "a blue square on the right",
        "The real cross-attention probabilities are recorded (the image is unchanged, bit for "
        "bit): per-token heat maps, a grid, an evolution GIF and metadata in capture/.",
        {"capture": [{"dir": "capture"}]},
    ),
    Demo(
        "self-attention",
        "Self-attention control",
        "a yellow circle on the left",
        "Self-attention between the left and right halves cut (scale 0, both ways): a small "
        "change on the toy model: the circle comes out a little smaller, its colour unchanged "
        f"(yellow). The third picture is the difference, {DIFF_GAIN}x amplified.",
        {
            "self_attention": [
                {
                    "query_region": "left",
                    "key_region": "right",
                    "scale": 0.0,
                    "symmetric": True,
                }
            ]
        },
        difference=True,
    ),
]


def lora_demo(pipe, out: Path, steps: int = LORA_STEPS) -> Demo:
    """Train the recolouring LoRA (blue circles captioned red) on the toy model for the demo."""
    from .toy.effects import train_recolour_lora

    print(
        f"  training a rank-4 LoRA for {steps} steps (blue circles captioned 'red') ..."
    )
    train_recolour_lora(pipe, out / LORA_FILE, steps=steps, lr=LORA_LR)
    weights = ", ".join(f"{w:g}" for w in LORA_WEIGHTS)
    return Demo(
        "lora",
        "LoRA: a recolouring adapter trained here, at rising weights",
        "a red circle on the left",
        f"A rank-4 attention LoRA trained here for {steps} steps on blue circles captioned "
        f"'a red circle ...' ({LORA_FILE}), applied as a runtime adapter at weights "
        f"{weights}: as the weight rises the circle goes from red to the blue it was "
        "trained on, never back (little changes at 0.25; on the way the toy model, which "
        "knows only its palette, passes through brown and green).",
        variants=[
            (f"weight {w:g}", {"lora": [{"path": LORA_FILE, "weight": w}]})
            for w in LORA_WEIGHTS
        ],
    )


def resolved(recipe: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """The recipe with its relative LoRA paths and capture folders taken from out."""
    recipe = copy.deepcopy(recipe)
    for entry in recipe.get("lora", []):
        if "path" in entry and not Path(entry["path"]).is_absolute():
            entry["path"] = str(out / entry["path"])
    for entry in recipe.get("capture", []):
        entry["dir"] = str(out / entry.get("dir", "capture"))
    return recipe


def difference(a: np.ndarray, b: np.ndarray, gain: int = DIFF_GAIN) -> np.ndarray:
    """|a - b| of two uint8 images, amplified and clipped, as uint8."""
    d = np.abs(a.astype(np.int32) - b.astype(np.int32)) * gain
    return np.clip(d, 0, 255).astype(np.uint8)


def render(pipe, demo: Demo, settings, out: Path) -> List[Tuple[str, np.ndarray]]:
    """(label, uint8 image) of the baseline and of each variant of one panel."""
    from .cli import baseline_settings, generate, generate_with

    pictures = []
    for i, (label, recipe) in enumerate(demo.panels()):
        parsed = from_dict(resolved(recipe, out), f"{demo.name}: {label}")
        if i == 0:
            base = baseline_settings(settings, parsed)
            pictures.append(
                ("baseline", generate(pipe, base, f"{demo.name}: baseline"))
            )
        image, _ = generate_with(pipe, settings, parsed, f"{demo.name}: {label}")
        pictures.append((label, image))
    if demo.difference:
        pictures.append(
            (f"difference x{DIFF_GAIN}", difference(pictures[-1][1], pictures[0][1]))
        )
    return pictures


def recipe_file(recipe: Dict, settings) -> Dict[str, Any]:
    """A recipe for ``pulse generate --recipe`` that redraws one picture of a panel."""
    generate = {
        "steps": settings.steps,
        "seed": settings.seed,
        "cfg": settings.cfg,
        "size": settings.size,
    }
    return {"generate": generate, **recipe}


def latest_capture(out: Path) -> Optional[str]:
    """The folder (relative to out) of the newest run in out/capture's gallery index."""
    index = out / "capture" / "index.json"
    if not index.is_file():
        return None
    runs = json.loads(index.read_text(encoding="utf-8"))
    return f"capture/{runs[-1]['folder']}" if runs else None


def _tile_html(
    demo: Demo, files: List[Tuple[str, str]], seconds: float, capture: Optional[str]
) -> str:
    blocks = []
    for label, name in files:
        recipe = json.dumps(json.loads(Path(name).read_text()), indent=2)
        command = (
            f"pulse generate {shlex.quote(demo.prompt)} --recipe {Path(name).name}"
        )
        blocks.append(
            f"<p>{html.escape(label)}: <code>{html.escape(command)}</code></p>"
            f"<pre>{html.escape(recipe)}</pre>"
        )
    return (
        f"<section><h2>{html.escape(demo.title)}</h2>"
        f"<p>{html.escape(demo.what)}</p>"
        f"<p>prompt: <code>{html.escape(demo.prompt)}</code> ({seconds:.1f} s)</p>"
        f'<img src="{demo.name}.png" alt="{html.escape(demo.title)}">'
        + (
            '<p><a href="capture/index.html">the attention gallery</a> · '
            f'<a href="{html.escape(capture)}/evolution.gif">the evolution GIF</a></p>'
            f'<img src="{html.escape(capture)}/evolution.gif" alt="evolution GIF">'
            if capture
            else ""
        )
        + "".join(blocks)
        + "</section>"
    )


def run_demo(
    pipe,
    out: Path,
    size: int,
    steps: int = 20,
    seed: int = 0,
    demos: Optional[List[Demo]] = None,
    lora_steps: Optional[int] = None,
) -> Path:
    """Write one picture per technique, its recipes and an index.html; returns the index path.

    ``lora_steps``: train the recolouring LoRA panel this many steps (None:
    LORA_STEPS, 0: no LoRA panel).
    """
    from .cli import Settings, side_by_side

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    demos = list(demos or DEMOS)
    if lora_steps is None:
        lora_steps = LORA_STEPS
    if lora_steps:
        demos.append(lora_demo(pipe, out, lora_steps))
    scale = max(1, DISPLAY_WIDTH // size)
    for demo in demos:
        s = Settings(prompt=demo.prompt, steps=steps, seed=seed, size=size)
        start = time.perf_counter()
        pictures = render(pipe, demo, s, out)
        seconds = time.perf_counter() - start
        side_by_side(
            [im for _, im in pictures], [label for label, _ in pictures], scale=scale
        ).save(out / f"{demo.name}.png")
        files = []
        for i, (label, recipe) in enumerate(demo.panels()):
            name = demo.name if len(demo.panels()) == 1 else f"{demo.name}-{i + 1}"
            path = out / f"{name}.json"
            data = recipe_file(recipe, s)
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            files.append((label, str(path)))
        captured = any("capture" in r for _, r in demo.panels())
        capture = latest_capture(out) if captured else None
        sections.append(_tile_html(demo, files, seconds, capture))
        print(f"  {demo.title}: {out / (demo.name + '.png')}")
    index = out / "index.html"
    index.write_text(
        "<!doctype html><meta charset=utf-8><title>pulse demo</title>"
        "<style>body{font-family:sans-serif;max-width:80em;margin:auto}"
        "img{image-rendering:pixelated;max-width:100%}"
        "pre{background:#f4f4f4;padding:.5em}</style>"
        f"<h1>pulse demo</h1><p>{steps} steps, seed {seed}, cfg {s.cfg}. "
        "Left: baseline; right: with the technique. Each JSON block is a recipe for "
        "<code>pulse generate --recipe</code>, written beside the picture: in this "
        "folder, the command above it redraws that picture.</p>" + "".join(sections),
        encoding="utf-8",
    )
    return index
