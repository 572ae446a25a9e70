"""Measure prompt-to-prompt, local blend, PAG and the demo's newer panels on the toy model.

    python tools/measure_editing.py                    # seed set 0: the tests' seeds
    python tools/measure_editing.py --seeds 3 --kernels default Haswell Nehalem \\
        Prescott Sandybridge bundled --bundled-seeds 1 # spread over seeds and BLAS kernels

Seed set k is what ``tests/test_effects_editing.py`` runs, moved by k: prompt-to-prompt
on seeds 16k..16k+15, local blend on 3k..3k+2, PAG with caption i on seed 8k+i. Each
statistic is the quantity a test compares with its threshold (given beside it). The
demo's prompt-weighting, prompt-to-prompt and PAG panels (``tests/test_demo.py``) are
measured at the demo's own settings (20 steps, seed 0) in seed set 0 only.
``--kernels`` runs each kernel in its own process (see tools/measure_effects.py).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure_effects import across_kernels, add_kernel_options, report  # noqa: E402

from pulse_plugin import blas, demo  # noqa: E402
from pulse_plugin.toy import editing  # noqa: E402
from pulse_plugin.toy import shapes  # noqa: E402
from pulse_plugin.toy import effects as E  # noqa: E402

THRESHOLDS = {  # statistic -> the test's bound
    "p2p: edit - plain IoU (mean)": ">= 0.06",
    "p2p: edit blueness (mean)": ">= 0.2",
    "p2p: source blueness (max)": "<= -0.5",
    "blend: right change (max)": "<= 0.09",
    "blend: with / without, right change (max)": "< 1",
    "blend: with / without, right change (mean)": "<= 0.85",
    "blend: left blueness gain (min)": ">= 0.6",
    "pag: accuracy change": ">= -0.0625",
    "pag: mean abs change": "> 1e-4",
    "weights: embedding - baseline blueness": "> 0.5",
    "weights: attention - embedding blueness": "> 0.15",
    "p2p: edit - plain IoU with the source": "> 0.15",
    "p2p: plain's x shift": "> 0.15",
    "p2p: edit's x shift, abs": "< 0.1",
    "p2p: largest blob's fill gain": "> 0.1",
    "pag: mean change (0-255)": "> 2",
    "pag: x shift, abs": "< 0.1",
}
PANELS = ("prompt-weights", "prompt-to-prompt", "pag")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1, help="seed sets 0..N-1 (default 1)")
    add_kernel_options(p, "seed sets")
    return p.parse_args(argv)


def seed_set(pipe, k: int) -> Dict[str, float]:
    """The tests' statistics on seed set k."""
    kept = editing.layout_kept(pipe, range(16 * k, 16 * k + 16))
    blend = editing.local_blend(pipe, range(3 * k, 3 * k + 3))
    base, plain = editing.pag_accuracy(pipe, 0.0, seed=8 * k)
    guided, with_pag = editing.pag_accuracy(pipe, 3.0, seed=8 * k)
    return {
        "p2p: edit - plain IoU (mean)": kept["edit"].mean() - kept["plain"].mean(),
        "p2p: edit blueness (mean)": kept["blue"].mean(),
        "p2p: source blueness (max)": kept["source_blue"].max(),
        "blend: right change (max)": blend["blend"].max(),
        "blend: with / without, right change (max)": (
            blend["blend"] / blend["plain"]
        ).max(),
        "blend: with / without, right change (mean)": blend["blend"].mean()
        / blend["plain"].mean(),
        "blend: left blueness gain (min)": blend["gain"].min(),
        "pag: accuracy change": guided - base,
        "pag: mean abs change": float(np.abs(with_pag - plain).mean()),
    }


def panels(pipe) -> Dict[str, float]:
    """The demo panels' statistics (editing.PANEL_STATISTICS) at the demo's settings."""
    chosen = [d for d in demo.DEMOS if d.name in PANELS]
    with tempfile.TemporaryDirectory() as tmp:
        demo.run_demo(pipe, Path(tmp), shapes.SIZE, demos=chosen, lora_steps=0)
        pictures = {n: demo.read_panel(Path(tmp), n, shapes.SIZE) for n in PANELS}
    return {
        name: editing.panel_statistic(name, pictures[panel])
        for name, (panel, _) in editing.PANEL_STATISTICS.items()
    }


def main(argv=None) -> int:
    args = parse(argv)
    if args.kernels:
        heading = "per kernel: the values over seed sets 0, 1, ... (panels: set 0 only)"
        return across_kernels(
            args, argv if argv is not None else sys.argv[1:], __file__, heading
        )
    pipe = E.load_toy()
    stats: Dict[str, List[float]] = {}
    t0 = time.perf_counter()
    for k in range(args.seeds):
        values = seed_set(pipe, k)
        if k == 0:
            values.update(panels(pipe))
        for name, value in values.items():
            stats.setdefault(name, []).append(float(value))
    print(
        f"\n{args.seeds} seed set(s) ({time.perf_counter() - t0:.0f} s; "
        f"BLAS fingerprint {blas.fingerprint()})\n"
    )
    report(stats, args.json, "statistic", "per seed set", THRESHOLDS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
