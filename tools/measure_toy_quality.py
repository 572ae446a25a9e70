#!/usr/bin/env python
"""Measure the toy model against issue 6's quality bar and print the numbers.

For every held-out caption (colour/shape/position triples never drawn in
training), sample images with upstream's StableDiffusion loop, decode them and
classify the drawn object's colour and position. Exit status 0 when the bar
(colour >= 90%, position >= 80%) is met, 1 when not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse_plugin.models import latent_size, load_pipeline  # noqa: E402
from pulse_plugin.pulse import Pulse  # noqa: E402
from pulse_plugin.toy import default_model_path, quality, shapes  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--per-caption", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--two-objects", action="store_true", help="also two-object")
    parser.add_argument("--grid", type=Path, help="save a PNG grid of samples here")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument(
        "--pag", type=float, default=0.0, help="perturbed-attention guidance scale"
    )
    parser.add_argument(
        "--pag-block", default="mid", help="sites PAG perturbs (a block selector)"
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.pag:
            pulse = stack.enter_context(Pulse(load_pipeline(args.model)))
            pulse.perturbed_attention(args.pag, block=args.pag_block)
            return _measure(args, pulse.pipe)
        return _measure(args, load_pipeline(args.model))


def _measure(args, pipe) -> int:
    size = latent_size(pipe, folder=args.model)
    kw = dict(num_steps=args.steps, cfg_weight=args.cfg, latent_size=size)
    result = quality.measure(pipe, per_caption=args.per_caption, seed=args.seed, **kw)
    out = dict(
        model=str(args.model),
        steps=args.steps,
        cfg=args.cfg,
        pag=args.pag,
        samples=result.samples,
        colour=round(result.colour_rate, 4),
        position=round(result.position_rate, 4),
        passed=result.passed,
        per_caption=result.per_caption,
    )
    if args.two_objects:
        two = quality.measure_two_objects(
            pipe, per_caption=max(1, args.per_caption // 2), seed=args.seed, **kw
        )
        out["two_objects"] = dict(
            samples=two.samples,
            object_colour_in_half=round(two.colour_rate, 4),
            both_right=round(two.position_rate, 4),
        )
    if args.grid:
        rows = [
            quality.generate(pipe, shapes.caption([o]), 8, args.seed + 7, **kw)
            for o in shapes.held_out_singles()
        ]
        import numpy as np

        shapes.to_pil(shapes.grid(np.concatenate(rows), cols=8)).resize(
            (8 * 96, len(rows) * 96), 0
        ).save(args.grid)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"model {args.model}: {args.steps} steps, cfg {args.cfg}, pag {args.pag}")
        for text, (n, c, p) in result.per_caption.items():
            print(f"  {text:40s} colour {c}/{n}  position {p}/{n}")
        print(("PASS " if result.passed else "FAIL ") + result.summary())
        if "two_objects" in out:
            print("two objects:", json.dumps(out["two_objects"]))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
