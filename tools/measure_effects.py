"""Measure each technique's effect on the toy model: baseline vs technique, over seeds.

    python tools/measure_effects.py --seeds 4          # 4 seeds x 8 images per run
    python tools/measure_effects.py --only injection bending --steps 12
    python tools/measure_effects.py --seeds 3 --kernels default Haswell Prescott \\
        bundled --bundled-seeds 1                      # spread over BLAS kernels

Every number is a mean over the seeds' images (the spread is the standard
deviation over images; for per-run numbers, over seeds). The measures are the
functions of ``pulse_plugin.toy.effects`` that ``tests/test_effects.py``
asserts on with seed 0; the second table gives, per seed, the statistics
(``effects.STATISTICS``) the tests compare with their thresholds.

``--kernels`` runs the measure once per BLAS kernel in a subprocess
(``pulse_plugin.blas.kernel_env``: an OpenBLAS kernel forced with
``OPENBLAS_CORETYPE``, ``default`` = OpenBLAS's own choice, ``bundled`` =
MLX's bundled BLAS, nothing preloaded) and prints each statistic's values
over seeds and kernels with the smallest and largest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse_plugin import blas  # noqa: E402
from pulse_plugin.toy import effects as E  # noqa: E402

Stats = Dict[str, List[float]]  # statistic -> one value per seed


def parse(argv=None) -> argparse.Namespace:
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
    add_kernel_options(p)
    return p.parse_args(argv)


def add_kernel_options(p: argparse.ArgumentParser, seeds: str = "seeds") -> None:
    """--kernels, --bundled-seeds and --json (what across_kernels needs)."""
    p.add_argument(
        "--kernels",
        nargs="+",
        choices=(blas.DEFAULT, blas.BUNDLED) + blas.KERNELS,
        help="measure once per BLAS kernel, each in a subprocess",
    )
    p.add_argument(
        "--bundled-seeds",
        type=int,
        default=None,
        help=f"{seeds} for the (slow) bundled BLAS (default: --seeds)",
    )
    p.add_argument("--json", type=Path, help="also write the statistics here")


def main(argv=None) -> int:
    args = parse(argv)
    if args.kernels:
        return across_kernels(args, argv if argv is not None else sys.argv[1:])
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
    stats: Stats = {}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        runs = E.Runs(pipe, args.n, seed, args.steps, args.cfg)
        for name in names:
            out = (
                E.lora(runs, lora_file) if name == "lora" else E.EXPERIMENTS[name](runs)
            )
            for key, values in out.items():
                results.setdefault(name, {}).setdefault(key, []).append(values)
            for stat, (experiment, _) in E.STATISTICS.items():
                if experiment == name:
                    stats.setdefault(stat, []).append(E.statistic(stat, out))
    seconds = time.perf_counter() - t0
    print(
        f"\n{args.seeds} seed(s) x {args.n} images, {args.steps} steps, cfg {args.cfg}"
        f" ({seconds:.0f} s; BLAS fingerprint {blas.fingerprint()})\n"
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
    print()
    report(stats, args.json, "statistic (tests/test_effects.py)", "per seed")
    if tmp is not None:
        tmp.cleanup()
    return 0


def report(
    stats: Stats, json_path: Optional[Path], name: str, per: str, bounds=None
) -> None:
    """Print each statistic's values with their min and max; write them to json_path."""
    bound = "" if bounds is None else " test's bound |"
    print(f"| {name} |{bound} {per} | min | max |")
    print("|---" * (4 if bounds is None else 5) + "|")
    for stat, values in stats.items():
        given = "" if bounds is None else f" {bounds[stat]} |"
        print(
            f"| {stat} |{given} {' '.join(f'{v:+.3f}' for v in values)} "
            f"| {np.nanmin(values):+.3f} | {np.nanmax(values):+.3f} |"
        )
    if json_path is not None:
        json_path.write_text(
            json.dumps(dict(fingerprint=blas.fingerprint(), stats=stats)) + "\n"
        )


def _without(argv: List[str], option: str, takes_values: bool) -> List[str]:
    """argv with option (and, if takes_values, the values after it) removed."""
    out, skipping = [], False
    for arg in argv:
        if arg == option or arg.startswith(option + "="):
            skipping = takes_values and "=" not in arg
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        out.append(arg)
    return out


def across_kernels(
    args: argparse.Namespace,
    argv: List[str],
    script: str = __file__,
    heading: Optional[str] = None,
) -> int:
    """Run script (this tool) once per kernel in a subprocess; print the statistics' spread.

    script takes argv, ``--seeds N`` and ``--json FILE`` (``{"fingerprint", "stats"}``).
    """
    argv = _without(_without(argv, "--kernels", True), "--json", True)
    argv = _without(argv, "--bundled-seeds", True)
    results: Dict[str, Stats] = {}
    prints: Dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kernel in args.kernels:
            out = Path(tmp) / f"{kernel}.json"
            extra = []
            if kernel == blas.BUNDLED and args.bundled_seeds is not None:
                extra = ["--seeds", str(args.bundled_seeds)]
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, script, *argv, *extra, "--json", str(out)],
                env=blas.kernel_env(kernel),
                check=True,
                stdout=subprocess.DEVNULL,
            )
            data = json.loads(out.read_text())
            results[kernel], prints[kernel] = data["stats"], data["fingerprint"]
            print(
                f"{kernel}: {time.perf_counter() - t0:.0f} s, BLAS fingerprint "
                f"{data['fingerprint']}",
                flush=True,
            )
    kernels = list(results)
    heading = heading or (
        f"{args.n} images per run, {args.steps} steps, cfg {args.cfg}; "
        "per kernel: the values over seeds 0, 1, ..."
    )
    print(f"\n{heading}\n")
    print(f"| statistic | {' | '.join(kernels)} | min | max |")
    print("|---" * (len(kernels) + 3) + "|")
    for stat in results[kernels[0]]:
        cells, values = [], []
        for kernel in kernels:
            vs = results[kernel].get(stat, [])
            values += vs
            cells.append(" ".join(f"{v:+.2f}" for v in vs))
        print(
            f"| {stat} | {' | '.join(cells)} | {np.nanmin(values):+.3f} "
            f"| {np.nanmax(values):+.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
