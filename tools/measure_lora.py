"""Measure the LoRA tests' numbers across seeds and BLAS kernels.

    python tools/measure_lora.py                      # 4 seeds x every kernel below
    python tools/measure_lora.py --seeds 2 --kernels default Haswell bundled
    python tools/measure_lora.py --only tiny-train --jobs 2 --save rows.jsonl
    python tools/measure_lora.py --load rows.jsonl      # the tables again

Two measurements, each run once per seed under each kernel (a fresh process
per kernel, since OpenBLAS picks its kernel when it loads):

- ``recolour``: ``effects.train_recolour_lora`` trained with seed s, then the
  blueness of "a red circle on the left" (sampling seed s, 8 images) without
  the LoRA, at weight 0.5 and at weight 1, as
  ``tests/test_effects.py::test_recolouring_lora_and_its_half_blend`` does
  with s = 0;
- ``tiny-train``: the dataset loss before and after training of
  ``tests/test_lora_train.py::test_training_lowers_loss_and_round_trips``
  (its dataset and config, with seed s).

Kernels: ``default`` (Debian's OpenBLAS preloaded, its own choice of
kernel), a name such as ``Haswell`` (the same with ``OPENBLAS_CORETYPE``
forcing that kernel) or ``bundled`` (no preload: the BLAS bundled in MLX's
wheel, about 7x slower here). Each row names the kernel OpenBLAS reports.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
KERNELS = (
    "default",
    "Haswell",
    "Sandybridge",
    "Nehalem",
    "Prescott",
    "SkylakeX",
    "bundled",
)
MEASURES = ("recolour", "tiny-train")


def kernel_env(kernel: str) -> Dict[str, str]:
    """The environment that makes a child process use kernel."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if kernel == "bundled":
        env.pop("LD_PRELOAD", None)
        return env
    env["LD_PRELOAD"] = OPENBLAS
    if kernel != "default":
        env["OPENBLAS_CORETYPE"] = kernel
    return env


def blas_in_use() -> str:
    """The kernel of the preloaded OpenBLAS, or "bundled" when none is loaded."""
    maps = Path("/proc/self/maps").read_text()
    if "libopenblas" not in maps:
        return "bundled"
    lib = ctypes.CDLL(OPENBLAS)
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return "OpenBLAS " + lib.openblas_get_corename().decode()


def measure_recolour(seed: int, n: int, model=None) -> Dict[str, float]:
    """Train the recolouring LoRA with seed and measure it on sampling seed seed."""
    from pulse_plugin.toy import effects as E

    pipe = E.load_toy(model)
    runs = E.Runs(pipe, n, seed)
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        result = E.train_recolour_lora(
            pipe, Path(tmp) / "recolour.safetensors", seed=seed
        )
        seconds = time.perf_counter() - tic
        r = E.lora(runs, result.path)
    base, half, full = (
        E.summary(r[k])[0] for k in ("baseline", "weight 0.5", "weight 1")
    )
    return {
        "train s": seconds,
        "baseline": base,
        "weight 0.5": half,
        "weight 1": full,
        "shift 1": full - base,
        "half share": (half - base) / (full - base),
        "least blue at 1": float(np.nanmin(r["weight 1"])),
    }


def measure_tiny_train(seed: int) -> Dict[str, float]:
    """The loss drop of test_lora_train's training test, with seed."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_lora_train import config, make_dataset

    from pulse_plugin import lora, tiny, upstream
    from pulse_plugin.lora import train

    pipe = tiny.build_pipeline(upstream.load(patched=False))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data")
        cfg = config(tmp, seed=seed)
        before = train.dataset_loss(pipe, data, cfg)
        tic = time.perf_counter()
        result = train.train(pipe, data, cfg)
        seconds = time.perf_counter() - tic
        lora.apply(pipe, lora.load_lora(result.path))
        after = train.dataset_loss(pipe, data, cfg)
        lora.remove(pipe)
    return {
        "train s": seconds,
        "before": before,
        "after": after,
        "after / before": after / before,
    }


def worker(measures: Sequence[str], seeds: Sequence[int], n: int, model) -> None:
    """Measure in this process, one JSON line per (measure, seed) on stdout."""
    blas = blas_in_use()
    for measure in measures:
        for seed in seeds:
            if measure == "recolour":
                row = measure_recolour(seed, n, model)
            else:
                row = measure_tiny_train(seed)
            print(json.dumps({"measure": measure, "seed": seed, "blas": blas, **row}))
            sys.stdout.flush()


def run_kernel(kernel: str, args, save: Optional[Path] = None) -> List[dict]:
    """Run the worker under kernel; its rows, labelled with kernel (each appended to save)."""
    cmd = [sys.executable, __file__, "--worker", "--n", str(args.n)]
    cmd += ["--seeds", str(args.seeds), "--first-seed", str(args.first_seed)]
    cmd += ["--only", *args.only]
    if args.model:
        cmd += ["--model", args.model]
    rows = []
    with subprocess.Popen(
        cmd, env=kernel_env(kernel), stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as proc:
        for line in proc.stdout:
            if line[:1] != "{":
                continue
            row = {"kernel": kernel, **json.loads(line)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if save is not None:
                with open(save, "a") as f:
                    f.write(json.dumps(row) + "\n")
    if proc.returncode:
        raise SystemExit(f"{kernel}: the worker failed (exit {proc.returncode})")
    return rows


def table(rows: List[dict], measure: str) -> None:
    """A markdown table of measure's rows, then each column's range."""
    order = {k: i for i, k in enumerate(KERNELS)}
    rows = [r for r in rows if r["measure"] == measure]
    rows.sort(
        key=lambda r: (r["seed"], order.get(r["kernel"], len(order)), r["kernel"])
    )
    if not rows:
        return
    cols = [k for k in rows[0] if k not in ("measure", "seed", "blas", "kernel")]
    fmt = {c: "{:.1f}" if c == "train s" else "{:+.3f}" for c in cols}
    print(f"\n{measure}\n")
    print("| kernel | BLAS | seed | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 3) + "|")
    for r in rows:
        cells = " | ".join(fmt[c].format(r[c]) for c in cols)
        print(f"| {r['kernel']} | {r['blas']} | {r['seed']} | {cells} |")
    print("\n| range | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    lo = " | ".join(fmt[c].format(min(r[c] for r in rows)) for c in cols)
    hi = " | ".join(fmt[c].format(max(r[c] for r in rows)) for c in cols)
    print(f"| min | {lo} |\n| max | {hi} |")


KEY_COLUMNS = {"recolour": ("shift 1", "half share"), "tiny-train": ("after / before",)}


def pivot(rows: List[dict], measure: str) -> None:
    """measure's key columns as seeds x kernels (the test files' comment tables)."""
    rows = [r for r in rows if r["measure"] == measure]
    if not rows:
        return
    kernels = [k for k in KERNELS if any(r["kernel"] == k for r in rows)]
    kernels += sorted({r["kernel"] for r in rows} - set(kernels))
    cells = {(r["seed"], r["kernel"]): r for r in rows}
    for col in KEY_COLUMNS[measure]:
        print(f"\n{measure}: {col}\n")
        print("| seed | " + " | ".join(kernels) + " |")
        print("|---" * (len(kernels) + 1) + "|")
        for seed in sorted({r["seed"] for r in rows}):
            vals = [cells.get((seed, k), {}).get(col) for k in kernels]
            text = ["-" if v is None else f"{v:+.2f}" for v in vals]
            print(f"| {seed} | " + " | ".join(text) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4, help="N seeds (default 4)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds from (default 0)")
    p.add_argument("--n", type=int, default=8, help="images per run (default 8)")
    p.add_argument("--model", default=None, help="model folder (default: the toy)")
    p.add_argument("--only", nargs="+", choices=MEASURES, default=list(MEASURES))
    p.add_argument(
        "--kernels",
        nargs="+",
        default=list(KERNELS),
        help="default, bundled or an OPENBLAS_CORETYPE name (default: %(default)s)",
    )
    p.add_argument("--jobs", type=int, default=1, help="kernels measured at once")
    p.add_argument("--save", type=Path, help="append each row to this .jsonl file")
    p.add_argument(
        "--load", type=Path, nargs="+", help="print the tables of saved rows only"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        worker(args.only, seeds, args.n, args.model)
        return 0
    if args.load:
        rows = [json.loads(x) for f in args.load for x in f.read_text().splitlines()]
        for measure in args.only:
            table(rows, measure)
            pivot(rows, measure)
        return 0
    if not Path(OPENBLAS).exists() and set(args.kernels) - {"bundled"}:
        p.error(f"{OPENBLAS} not found (apt-get install libopenblas0-pthread)")
    tic = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        per_kernel = list(
            pool.map(lambda k: run_kernel(k, args, args.save), args.kernels)
        )
    rows = [r for rs in per_kernel for r in rs]
    print(
        f"{args.seeds} seed(s) x {len(args.kernels)} kernel(s), "
        f"{time.perf_counter() - tic:.0f} s"
    )
    for measure in args.only:
        table(rows, measure)
        pivot(rows, measure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
