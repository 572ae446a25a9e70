"""What every technique shares: its sites, kind, window and rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import mlx.core as mx
import numpy as np

from ..chain import Call, Next
from ..schedule import Window

ROWS = ("cond", "all")


@dataclass
class Technique:
    """A technique's placement: selected sites (block ids), attention kind, window and rows."""

    blocks: Tuple[str, ...]
    kind: str  # "self" or "cross"
    window: Window
    rows: str = "cond"

    def __post_init__(self):
        if self.kind not in ("self", "cross"):
            raise ValueError(f"kind: expected 'self' or 'cross', got {self.kind!r}")
        if self.rows not in ROWS:
            raise ValueError(f"rows: expected one of {ROWS}, got {self.rows!r}")

    @property
    def name(self) -> str:
        return type(self).__name__

    def active(self, call: Call) -> bool:
        """Whether this call is on the base branch and inside the window."""
        meta = call.meta
        return call.branch == "base" and self.window.contains(meta.step_idx, meta.sigma)

    def link(self, call: Call, next: Next) -> mx.array:  # pragma: no cover - abstract
        raise NotImplementedError

    def enter(self, pipe) -> None:
        """Called when the Pulse holding this technique is entered (most need nothing)."""

    def exit(self, pipe) -> None:
        """Called when that Pulse exits, also after an error."""


def active_rows(call: Call, rows: str) -> slice:
    """The batch rows a technique edits: the conditional rows, or all of them."""
    return slice(0, len(call.x)) if rows == "all" else call.meta.cond_rows


def row_mask(batch: int, rows: slice) -> np.ndarray:
    """(batch,) float32: 1 on the edited rows, 0 elsewhere."""
    out = np.zeros(batch, np.float32)
    out[rows] = 1
    return out


def replace_rows(base: mx.array, edited: mx.array, rows: slice) -> mx.array:
    """base with its rows replaced by edited (which holds only those rows)."""
    parts = [base[: rows.start], edited, base[rows.stop :]]
    return mx.concatenate([p for p in parts if p.shape[0]], axis=0)


def blend(base: mx.array, other: mx.array, weight, rows: slice) -> mx.array:
    """base + weight * (other - base) on rows (other holds only those rows); base elsewhere."""
    return replace_rows(base, base[rows] + weight * (other - base[rows]), rows)


def window_of(
    sigma_start: Optional[float],
    sigma_end: Optional[float],
    steps: Optional[Tuple[Optional[int], Optional[int]]],
) -> Window:
    """A Window from the user-facing arguments."""
    step_start, step_end = steps if steps is not None else (None, None)
    return Window(sigma_start, sigma_end, step_start, step_end)
