"""``pulse demo``: every technique on one model, before and after, in an HTML gallery.

Each panel is the baseline and one or more pictures with a technique, at the
same seed; ``tests/test_demo.py`` measures on the toy model that every panel
shows what its text says. Every picture's recipe is written beside it as JSON
(``pulse generate PROMPT --recipe NAME.json`` in the folder redraws it); the
prompt-to-prompt panel (two prompts, one batch) shows its ``pulse edit`` command.
"""

from __future__ import annotations

import copy
import html
import json
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

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
    generate: Dict[str, Any] = field(default_factory=dict)  # every picture's settings

    def panels(self) -> List[Tuple[str, Dict[str, Any]]]:
        """(label, recipe) of each picture after the baseline."""
        return self.variants or [(self.name, self.recipe)]


DIFF_GAIN = 4


@dataclass
class EditDemo:
    """A prompt-to-prompt panel: the source, a plain regeneration of the edit, the edit.

    ``flags`` are ``pulse edit``'s; the page shows the command that redraws the edit.
    """

    name: str
    title: str
    prompt: str
    edit: str
    what: str
    flags: List[str] = field(default_factory=list)
    generate: Dict[str, Any] = field(default_factory=dict)

    def command(self, settings) -> List[str]:
        """The ``pulse edit`` arguments that redraw this panel's edit."""
        return [
            "edit",
            self.prompt,
            self.edit,
            *self.flags,
            *(f"--{key}={settings_value(settings, key)}" for key in SHOWN_SETTINGS),
        ]


SHOWN_SETTINGS = ("steps", "seed", "cfg", "size")


def settings_value(settings, key: str) -> str:
    return f"{getattr(settings, key):g}"


def _bends(mode: str, words, **kw) -> Dict[str, Any]:
    return {"bend": [{"token": t, "mode": mode, **kw} for t in words]}


PAG_TEXT = (
    "Perturbed-attention guidance (scale 3, mid block) adds a third batch row whose "
    "self-attention is the identity and steers away from it, here at CFG 1 where "
    "guidance is weakest. On the toy model it changes the picture a little: the circle "
    "is a slightly cleaner red, in the same place (the third picture is the difference, "
    f"{DIFF_GAIN}x amplified). It does not make this model better: over 32 samples of "
    "held-out captions at CFG 1 its colour accuracy and palette error are plain sampling's "
    "(tests/test_effects_editing.py)."
)

DEMOS: List[Union[Demo, EditDemo]] = [
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
    Demo(
        "prompt-weights",
        "Prompt-weighting syntax, A1111 style",
        "a blue (red:0.05) circle on the left",
        "With --weights a1111 the marks are read and removed: the baseline is the bare "
        "caption 'a blue red circle on the left' (a red circle on the left, more objects "
        "below it). Weight 0.05 on 'red', on attention probabilities (this project's "
        "default, as reweight): one "
        "blue circle on the left (middle). On token embeddings, as A1111 itself weights: "
        "one circle on the left, green, part way to blue (right). compel's "
        "'a blue (red)0.05 circle on the left' gives the middle picture bit for bit.",
        variants=[
            ("on attention", {"generate": {"weights": "a1111"}}),
            (
                "on embeddings",
                {"generate": {"weights": "a1111", "weights_mode": "embedding"}},
            ),
        ],
    ),
    EditDemo(
        "prompt-to-prompt",
        "Prompt-to-prompt: a shape edited in place",
        "a red circle",
        "a red square",
        "The source and the edit are generated in one batch from the same noise; the edit "
        "takes the source's cross-attention maps for the tokens they share and, with "
        "--self-window :, its self-attention maps at every step. A plain regeneration of "
        "'a red square' with the same seed draws the square right of centre (middle); "
        "the edit draws a square where the circle was (right).",
        flags=["--self-window", ":"],
    ),
    Demo(
        "pag",
        "Perturbed-attention guidance at CFG 1",
        "a red circle",
        PAG_TEXT,
        {"pag": [{"scale": 3.0}]},
        difference=True,
        generate={"cfg": 1.0},
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


def render(pipe, demo, settings, out: Path) -> List[Tuple[str, np.ndarray]]:
    """(label, uint8 image) of the baseline and of each variant of one panel."""
    if isinstance(demo, EditDemo):
        return render_edit(pipe, demo, settings)
    from .cli import baseline_settings, generate, generate_with

    pictures = []
    for i, (label, recipe) in enumerate(demo.panels()):
        parsed = from_dict(resolved(recipe, out), f"{demo.name}: {label}")
        s = replace(settings, **parsed.generate)
        if i == 0:
            base = baseline_settings(s, parsed)
            pictures.append(
                ("baseline", generate(pipe, base, f"{demo.name}: baseline"))
            )
        image, _ = generate_with(pipe, s, parsed, f"{demo.name}: {label}")
        pictures.append((label, image))
    if demo.difference:
        pictures.append(
            (f"difference x{DIFF_GAIN}", difference(pictures[-1][1], pictures[0][1]))
        )
    return pictures


def render_edit(pipe, demo: EditDemo, settings) -> List[Tuple[str, np.ndarray]]:
    """The source, the edit's prompt regenerated plainly, and the prompt-to-prompt edit."""
    from .cli import build_parser, edit_images, edit_options, generate

    args = build_parser().parse_args(demo.command(settings))
    plain = generate(pipe, replace(settings, prompt=demo.edit), f"{demo.name}: plain")
    _, edited = edit_images(pipe, settings, demo.edit, **edit_options(args))
    return [
        ("source", generate(pipe, settings, f"{demo.name}: source")),
        ("plain regeneration", plain),
        ("prompt-to-prompt", edited),
    ]


def read_panel(out: Path, name: str, size: int) -> List[np.ndarray]:
    """A written panel's pictures as (size, size, 3) floats in [0, 1], read back from its PNG."""
    from PIL import Image

    from .cli import LABEL_BAND

    png = np.asarray(Image.open(Path(out) / f"{name}.png").convert("RGB"))
    scale = max(1, DISPLAY_WIDTH // size)
    w = size * scale
    if png.shape[0] != LABEL_BAND + w or png.shape[1] % w:
        raise ValueError(f"{name}.png: {png.shape} is not a row of {w}-pixel pictures")
    return [
        png[LABEL_BAND::scale, i * w : (i + 1) * w : scale] / 255.0
        for i in range(png.shape[1] // w)
    ]


def recipe_file(recipe: Dict, settings) -> Dict[str, Any]:
    """A recipe for ``pulse generate --recipe`` that redraws one picture of a panel."""
    generate = {key: getattr(settings, key) for key in SHOWN_SETTINGS}
    generate.update(recipe.get("generate", {}))
    return {**recipe, "generate": generate}


def redraws(demo, settings, out: Path) -> List[Tuple[str, str, Optional[str]]]:
    """(label, command, recipe text) that redraw each picture after the baseline.

    A recipe panel writes each picture's recipe as NAME[-i].json in out.
    """
    if isinstance(demo, EditDemo):
        command = "pulse " + " ".join(shlex.quote(a) for a in demo.command(settings))
        return [("prompt-to-prompt", command, None)]
    rows = []
    panels = demo.panels()
    for i, (label, recipe) in enumerate(panels):
        name = demo.name if len(panels) == 1 else f"{demo.name}-{i + 1}"
        text = json.dumps(recipe_file(recipe, settings), indent=2) + "\n"
        (out / f"{name}.json").write_text(text, encoding="utf-8")
        command = f"pulse generate {shlex.quote(demo.prompt)} --recipe {name}.json"
        rows.append((label, command, text))
    return rows


def latest_capture(out: Path) -> Optional[str]:
    """The folder (relative to out) of the newest run in out/capture's gallery index."""
    index = out / "capture" / "index.json"
    if not index.is_file():
        return None
    runs = json.loads(index.read_text(encoding="utf-8"))
    return f"capture/{runs[-1]['folder']}" if runs else None


def _tile_html(
    demo, rows: List[Tuple[str, str, Optional[str]]], seconds: float, capture
) -> str:
    blocks = [
        f"<p>{html.escape(label)}: <code>{html.escape(command)}</code></p>"
        + (f"<pre>{html.escape(text)}</pre>" if text else "")
        for label, command, text in rows
    ]
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
        s = replace(s, **demo.generate)
        start = time.perf_counter()
        pictures = render(pipe, demo, s, out)
        seconds = time.perf_counter() - start
        side_by_side(
            [im for _, im in pictures], [label for label, _ in pictures], scale=scale
        ).save(out / f"{demo.name}.png")
        captured = isinstance(demo, Demo) and any(
            "capture" in r for _, r in demo.panels()
        )
        capture = latest_capture(out) if captured else None
        sections.append(_tile_html(demo, redraws(demo, s, out), seconds, capture))
        print(f"  {demo.title}: {out / (demo.name + '.png')}")
    index = out / "index.html"
    index.write_text(
        "<!doctype html><meta charset=utf-8><title>pulse demo</title>"
        "<style>body{font-family:sans-serif;max-width:80em;margin:auto}"
        "img{image-rendering:pixelated;max-width:100%}"
        "pre{background:#f4f4f4;padding:.5em}</style>"
        f"<h1>pulse demo</h1><p>{steps} steps, seed {seed}, cfg {Settings.cfg:g} "
        "unless a panel says otherwise. Left: baseline; right: with the technique. "
        "Each JSON block is a recipe for <code>pulse generate --recipe</code>, written "
        "beside the picture: in this folder, the command above it redraws that picture "
        "(the prompt-to-prompt panel's is a <code>pulse edit</code> command).</p>"
        + "".join(sections),
        encoding="utf-8",
    )
    return index
