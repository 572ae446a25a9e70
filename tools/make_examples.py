"""Make the sample LoRA and blend the README uses, on the bundled toy model.

    python tools/make_examples.py                # writes examples/blue-circles.safetensors
                                                 # and examples/blend.toml, prints the effect

The LoRA is the toy model's recolouring adapter (``train_recolour_lora`` of
``pulse_plugin.toy.effects``: blue circles captioned "a red circle ..."), with the
demo's steps and learning rate and seed 0; the blend holds it at BLEND_WEIGHT.
Run it again whenever the toy model changes. On one machine it writes the same
bytes every time; other BLAS kernels change the low bits of the weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse_plugin import demo  # noqa: E402
from pulse_plugin.lora import adapters, blend, io  # noqa: E402
from pulse_plugin.toy import effects as E  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LORA_NAME = "blue-circles.safetensors"
BLEND_NAME = "blend.toml"
BLEND_WEIGHT = 0.8
PROMPT = E.RED_LEFT


def make_blend() -> blend.Blend:
    """The sample blend: the blue-circles LoRA at BLEND_WEIGHT."""
    return blend.Blend(
        name="blue-circles-blend",
        adapters=[LORA_NAME],
        weights=[BLEND_WEIGHT],
        description="the toy model's recolouring LoRA (red circles drawn blue), "
        f"at weight {BLEND_WEIGHT}",
        preview_prompt=PROMPT,
    )


def blueness_at(pipe, lora: io.LoRA, weights, n: int = 8) -> list:
    """Mean blue-minus-red score of n images of PROMPT at each LoRA weight (seed 0)."""
    out = []
    adapters.apply(pipe, [lora], [0.0])
    try:
        for w in weights:
            adapters.set_weights(pipe, {lora.name: w})
            images = E.generate(pipe, PROMPT, n, seed=0, steps=20, cfg=7.5)
            out.append(float(np.nanmean(E.blueness(images))))
    finally:
        adapters.remove(pipe)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=EXAMPLES, help="folder (examples/)")
    p.add_argument("--model", help="model folder (default: the bundled toy model)")
    args = p.parse_args(argv)
    pipe = E.load_toy(args.model)
    lora_path = args.out / LORA_NAME
    result = E.train_recolour_lora(
        pipe, lora_path, steps=demo.LORA_STEPS, lr=demo.LORA_LR, seed=0
    )
    blend_path = blend.save_blend(make_blend(), args.out / BLEND_NAME)
    print(f"wrote {lora_path} (final loss {result.losses[-1]:.4f}) and {blend_path}")
    weights = [0.0, 0.5, BLEND_WEIGHT, 1.0]
    scores = blueness_at(pipe, io.load_lora(lora_path), weights)
    for w, b in zip(weights, scores):
        print(f"  weight {w:g}: blueness {b:+.2f} of {PROMPT!r} (8 images, seed 0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
