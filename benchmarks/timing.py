"""Shared pieces of the benchmark scripts: interleaved timing, tables, the SD 2.1 UNet."""

from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List

import mlx.core as mx


def interleave(
    variants: Dict[str, Callable[[], mx.array]], rounds: int, warmup: int = 1
):
    """Median seconds per variant over ``rounds`` interleaved rounds."""
    for _ in range(warmup):
        for fn in variants.values():
            mx.eval(fn())
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            mx.eval(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, times


def table(
    medians: Dict[str, float], baseline: str, goals: Dict[str, float] = None
) -> str:
    """A Markdown table of medians and ratios to the baseline."""
    goals = goals or {}
    rows = ["| variant | median s | ratio | goal |", "| --- | ---: | ---: | --- |"]
    base = medians[baseline]
    for name, t in medians.items():
        goal = goals.get(name)
        mark = (
            ""
            if goal is None
            else f"<= {goal:.2f} " + ("ok" if t / base <= goal else "MISSED")
        )
        rows.append(f"| {name} | {t:.3f} | {t / base:.3f} | {mark} |")
    return "\n".join(rows)


def machine() -> str:
    return f"{platform.machine()}, {platform.system()}, mlx {mx.__version__}, {date.today()}"


def write_json(path: Path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2))


def sd21_unet(sd):
    """SD 2.1's UNet layout, as upstream's loader builds it (up block types reversed)."""
    cfg = sd.config.UNetConfig()
    cfg.up_block_types = tuple(reversed(cfg.up_block_types))
    return sd.unet.UNetModel(cfg)
