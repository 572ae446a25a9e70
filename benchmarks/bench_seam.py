"""Cost of the seam: UNet forward of plain upstream vs patched (off) vs identity processors.

An SD-2.1-sized UNet (block channels 320/640/1280/1280, random weights shared
by both models), batch 2 (classifier-free guidance), 77 text tokens. Variants
run interleaved in one process; medians and ratios to plain upstream are
printed and written as JSON.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/bench_seam.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleave, machine, sd21_unet, table, write_json  # noqa: E402

from pulse_plugin import chain, upstream  # noqa: E402

GOALS = {
    "patched, switch off": 1.01,
    "identity processors": 1.03,
    "empty plugin chains": 1.03,
}


def build(latent: int):
    plain_sd, patched_sd = upstream.load(patched=False), upstream.load(patched=True)
    mx.random.seed(0)
    plain = sd21_unet(plain_sd)
    patched = sd21_unet(patched_sd)
    patched.update(plain.parameters())  # the same weight arrays, not a copy
    mx.eval(plain.parameters())
    x = mx.random.normal((2, latent, latent, 4))
    t = mx.array([500.0, 500.0])
    text = mx.random.normal((2, 77, 1024))
    return plain, patched, (x, t, text)


def run(patched, inputs, mode):
    hooks = patched.hooks
    hooks.clear()
    if mode == "identity":
        hooks.enabled = True
        for site in hooks.sites:
            for kind in ("self", "cross"):
                hooks.register(site, kind, lambda a, x, m, mask, meta: a(x, m, m, mask))
    elif mode == "chain":
        hooks.enabled = True
        for site in hooks.sites:
            for kind in ("self", "cross"):
                hooks.register(site, kind, chain.SiteChain())
    return patched(*inputs[:2], encoder_x=inputs[2])


def graph_build_times(variants, repeats: int):
    """Median seconds to build each variant's lazy graph (nothing is evaluated)."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--latent", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds (default 5)"
    )
    parser.add_argument(
        "--build-repeats", type=int, default=200, help="graph-build timings per variant"
    )
    parser.add_argument(
        "--json",
        default="benchmarks/results/seam.json",
        help="where to write the results",
    )
    args = parser.parse_args(argv)

    plain, patched, inputs = build(args.latent)
    variants = {
        "plain upstream": lambda: plain(*inputs[:2], encoder_x=inputs[2]),
        "patched, switch off": lambda: run(patched, inputs, "off"),
        "identity processors": lambda: run(patched, inputs, "identity"),
        "empty plugin chains": lambda: run(patched, inputs, "chain"),
    }
    build_times = graph_build_times(variants, repeats=args.build_repeats)
    medians, samples = interleave(variants, rounds=args.rounds)
    print(
        f"UNet forward, SD-2.1 size, batch 2, 77 tokens, latent {args.latent}x{args.latent}; {machine()}"
    )
    print(table(medians, "plain upstream", GOALS))
    print()
    print(
        "Building the forward graph only (Python side, no evaluation): the part the seam can add to"
    )
    print(table(build_times, "plain upstream"))
    write_json(
        Path(args.json),
        {
            "machine": machine(),
            "latent": args.latent,
            "medians": medians,
            "samples": samples,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
