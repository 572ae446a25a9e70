"""``pulse demo``: every technique on one model, before and after, in an HTML gallery."""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from .recipe import from_dict


@dataclass
class Demo:
    name: str
    title: str
    prompt: str
    what: str
    recipe: Dict[str, Any] = field(default_factory=dict)


DEMOS: List[Demo] = [
    Demo(
        "injection",
        "Prompt injection, all blocks",
        "a red circle",
        "The prompt 'a blue circle' replaces the conditioning of every cross-attention site "
        "(weight 1: out = (1 - w) * base + w * injected) over the whole sigma range.",
        {"inject": [{"block": "all", "prompt": "a blue circle", "weight": 1.0}]},
    ),
    Demo(
        "injection-window",
        "Prompt injection, late (low-sigma) steps only",
        "a red circle",
        "'a blue square' is injected only while sigma is below 2. On the toy model these late "
        "steps still set the colour and the outline (injected from sigma 14.6 down to 2 "
        "instead, nothing visible changes).",
        {
            "inject": [
                {
                    "block": "all",
                    "prompt": "a blue square",
                    "sigma_start": 2.0,
                    "sigma_end": 0.0,
                }
            ]
        },
    ),
    Demo(
        "multi-scale",
        "Multi-scale: the detail level only",
        "a red circle",
        "'a green square' at the highest-resolution (detail) sites only; the structure "
        "level keeps 'a red circle'. On the toy model the colour comes from the detail level "
        "(injected at the structure level only, nothing visible changes).",
        {"inject": [{"block": "detail", "prompt": "a green square"}]},
    ),
    Demo(
        "reweight",
        "Token re-weighting",
        "a blue red circle on the left",
        "A caption naming two colours gives a mix; attention to 'red' scaled by 0.1 "
        "(probabilities renormalised) on every site leaves blue.",
        {"reweight": [{"phrase": "red", "scale": 0.1}]},
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
        "a yellow circle on the left and a red square on the right",
        "'a blue circle on the left and a green square on the right' only in the left half "
        "(mask area-resized to each block): the circle turns blue, the square stays red "
        "(injected everywhere, the square turns green).",
        {
            "region": [
                {
                    "prompt": "a blue circle on the left and a green square on the right",
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
        "(apply phase, strength 1, renormalised). On the toy model this draws a second blob "
        "on the right rather than moving the circle.",
        {
            "bend": [
                {"token": t, "mode": "flip", "flip": "horizontal"}
                for t in ("red", "circle", "left")
            ]
        },
    ),
    Demo(
        "bend-translate",
        "Attention bending: translate",
        "a (red) (circle) on the (left)",
        "The maps of the object's words are shifted right by half the map's width: the "
        "circle is drawn on the right.",
        {
            "bend": [
                {"token": t, "mode": "translate", "dx": 0.5}
                for t in ("red", "circle", "left")
            ]
        },
    ),
    Demo(
        "bend-regional-mask",
        "Attention bending: regional mask",
        "a (red) (circle)",
        "A caption with no position word; the maps of 'red' and 'circle' are kept in the "
        "left half only, so the circle is drawn there.",
        {
            "bend": [
                {"token": t, "mode": "regional_mask", "region": [0.0, 0.0, 0.5, 1.0]}
                for t in ("red", "circle")
            ]
        },
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
        "Self-attention between the left and right halves suppressed (scale 0.1).",
        {
            "self_attention": [
                {
                    "query_region": "left",
                    "key_region": "right",
                    "scale": 0.1,
                    "symmetric": True,
                }
            ]
        },
    ),
]


def lora_demo(pipe, out: Path, steps: int) -> Demo:
    """Train a small recolouring LoRA on the toy model (blue circles captioned red) for the demo."""
    from .toy.effects import train_recolour_lora

    path = out / "recolour-lora.safetensors"
    print(
        f"  training a rank-4 LoRA for {steps} steps (blue circles captioned 'red') ..."
    )
    train_recolour_lora(pipe, path, steps=steps)
    return Demo(
        "lora",
        "LoRA: a recolouring adapter trained here, at weight 1",
        "a red circle on the left",
        f"A rank-4 attention LoRA trained here for {steps} steps on blue circles captioned "
        "'a red circle ...', applied as a runtime adapter at weight 1 (right); "
        f"the file is {path.name}.",
        {"lora": [{"path": str(path), "weight": 1.0}]},
    )


def _tile_html(name: str, demo: Demo, done: List[str], seconds: float) -> str:
    config = json.dumps(demo.recipe, indent=2)
    return (
        f"<section><h2>{html.escape(demo.title)}</h2>"
        f"<p>{html.escape(demo.what)}</p>"
        f"<p>prompt: <code>{html.escape(demo.prompt)}</code> ({seconds:.1f} s)</p>"
        f'<img src="{name}.png" alt="{html.escape(demo.title)}">'
        + (
            '<p><a href="capture/index.html">the attention gallery</a></p>'
            if "capture" in demo.recipe
            else ""
        )
        + f"<pre>{html.escape(config)}</pre></section>"
    )


def run_demo(
    pipe,
    out: Path,
    size: int,
    steps: int = 20,
    seed: int = 0,
    demos: List[Demo] = None,
    lora_steps: int = 0,
) -> Path:
    """Write one before/after PNG per technique and an index.html; returns the index path."""
    from .cli import (
        Settings,
        baseline_settings,
        display_scale,
        generate,
        generate_with,
        side_by_side,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    demos = list(demos or DEMOS)
    if lora_steps:
        demos.append(lora_demo(pipe, out, lora_steps))
    for demo in demos:
        if "capture" in demo.recipe:
            demo.recipe["capture"] = [{"dir": str(out / "capture")}]
        s = Settings(prompt=demo.prompt, steps=steps, seed=seed, size=size)
        start = time.perf_counter()
        recipe = from_dict(demo.recipe, demo.name)
        base = generate(pipe, baseline_settings(s, recipe), f"{demo.name}: baseline")
        image, done = generate_with(pipe, s, recipe, f"{demo.name}: with")
        seconds = time.perf_counter() - start
        side_by_side(
            [base, image], ["baseline", demo.name], scale=display_scale(size)
        ).save(out / f"{demo.name}.png")
        sections.append(_tile_html(demo.name, demo, done, seconds))
        print(f"  {demo.title}: {out / (demo.name + '.png')}")
    index = out / "index.html"
    index.write_text(
        "<!doctype html><meta charset=utf-8><title>pulse demo</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "img{image-rendering:pixelated}pre{background:#f4f4f4;padding:.5em}</style>"
        f"<h1>pulse demo</h1><p>{steps} steps, seed {seed}. Left: baseline; right: with the technique.</p>"
        + "".join(sections),
        encoding="utf-8",
    )
    return index
