"""Measure each technique's effect on the toy model: baseline vs technique, over seeds.

    python tools/measure_effects.py --seeds 4          # 4 seeds x 8 images per run
    python tools/measure_effects.py --only injection bending --steps 12

Every number is a mean over the seeds' images (the spread is the standard
deviation over images; for per-run numbers, over seeds). The measures are the
functions of ``pulse_plugin.toy.effects`` that ``tests/test_effects.py``
asserts on with seed 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse_plugin.toy import effects as E  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 (default 4)")
    p.add_argument("--n", type=int, default=8, help="images per run (default 8)")
    p.add_argument("--steps", type=int, default=E.STEPS, help="denoising steps")
    p.add_argument("--cfg", type=float, default=E.CFG, help="guidance weight")
    p.add_argument("--model", default=None, help="model folder (default: the toy)")
    p.add_argument(
        "--only",
        nargs="*",
        choices=sorted(list(E.EXPERIMENTS) + ["lora"]),
        help="experiments to run (default: all)",
    )
    p.add_argument(
        "--lora",
        default=None,
        help="a recolouring LoRA file (default: train one, timed, as the test does)",
    )
    args = p.parse_args(argv)
    pipe = E.load_toy(args.model)
    names = args.only or list(E.EXPERIMENTS) + ["lora"]
    lora_file = args.lora
    tmp = None
    if "lora" in names and lora_file is None:
        tmp = tempfile.TemporaryDirectory()
        lora_file = Path(tmp.name) / "recolour.safetensors"
        t0 = time.perf_counter()
        res = E.train_recolour_lora(pipe, lora_file)
        print(
            f"trained the recolouring LoRA: {E.LORA_STEPS} steps in "
            f"{time.perf_counter() - t0:.1f} s, loss {res.losses[0]:.4f} -> "
            f"{np.mean(res.losses[-5:]):.4f}, {lora_file.stat().st_size} bytes"
        )
    results: Dict[str, Dict[str, List[np.ndarray]]] = {}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        runs = E.Runs(pipe, args.n, seed, args.steps, args.cfg)
        for name in names:
            out = (
                E.lora(runs, lora_file) if name == "lora" else E.EXPERIMENTS[name](runs)
            )
            for key, values in out.items():
                results.setdefault(name, {}).setdefault(key, []).append(values)
    seconds = time.perf_counter() - t0
    print(
        f"\n{args.seeds} seed(s) x {args.n} images, {args.steps} steps, cfg {args.cfg}"
        f" ({seconds:.0f} s)\n"
    )
    print("| effect | measure | mean | spread | per seed |")
    print("|---|---|---|---|---|")
    for name, measures in results.items():
        for key, runs_values in measures.items():
            flat = np.concatenate(runs_values)
            mean, sd = E.summary(flat)
            per_seed = " ".join(f"{E.summary(v)[0]:+.3f}" for v in runs_values)
            if len(runs_values[0]) == 1:
                sd = E.summary([v[0] for v in runs_values])[1]
            print(f"| {name} | {key} | {mean:+.3f} | {sd:.3f} | {per_seed} |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
