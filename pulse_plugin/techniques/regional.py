"""Regional injection: prompts confined to regions of the image, several in one pass.

At each selected site every region's mask is area-resized to the site's
(H, W) and the attention outputs are blended per position on the edited rows:
``out = base + sum_i w_i * m_i * (injected_i - base)``; where the masks
overlap with a sum above 1 they are divided by that sum. An all-zero mask is
the identity; an all-ones mask is plain injection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import mlx.core as mx
import numpy as np

from .. import checks
from ..chain import Call, Next
from ..masks import resize
from .base import Technique, active_rows
from .injection import injected_branch


@dataclass
class Region:
    """A prompt, its embedding, its mask (2-D, [0, 1]) and its weight."""

    prompt: str
    embedding: mx.array
    mask: np.ndarray
    weight: float = 1.0

    def __post_init__(self):
        self.weight = checks.number("weight", self.weight, 0.0)


def region_weights(
    masks: List[np.ndarray], weights: List[float], shape
) -> List[np.ndarray]:
    """Per-region (H*W,) blend weights w_i * m_i at this shape, overlaps above 1 normalised."""
    ms = [resize(m, shape).reshape(-1) for m in masks]
    if len(ms) > 1:
        total = np.sum(ms, axis=0)
        ms = [np.where(total > 1, m / np.maximum(total, 1), m) for m in ms]
    return [(np.float32(w) * m).astype(np.float32) for m, w in zip(ms, weights)]


@dataclass
class RegionalInjection(Technique):
    """Inject one or more prompts, each inside its region, into cross-attention."""

    regions: Tuple[Region, ...] = ()
    _cache: Dict[tuple, List[mx.array]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "cross":
            raise ValueError("kind: regional injection acts on cross-attention only")
        if not self.regions:
            raise ValueError("regions: expected at least one region")

    def _weights(self, shape) -> List[mx.array]:
        if shape not in self._cache:
            ws = region_weights(
                [r.mask for r in self.regions], [r.weight for r in self.regions], shape
            )
            self._cache[shape] = [
                None if not np.any(w) else mx.array(w.reshape(1, -1, 1)) for w in ws
            ]
        return self._cache[shape]

    def link(self, call: Call, next: Next) -> mx.array:
        if not self.active(call):
            return next(call)
        base = next(call)
        rows = active_rows(call, self.rows)
        out = base
        for region, w in zip(self.regions, self._weights(call.meta.spatial_shape)):
            if w is None:  # empty at this resolution: exactly the base
                continue
            injected = injected_branch(call, region.embedding, rows, next)
            out = _accumulate(out, base, injected, w.astype(base.dtype), rows)
        return out


def _accumulate(
    out: mx.array, base: mx.array, injected: mx.array, w: mx.array, rows: slice
) -> mx.array:
    """out + w * (injected - base) on rows."""
    edited = out[rows] + w * (injected - base[rows])
    parts = [out[: rows.start], edited, out[rows.stop :]]
    return mx.concatenate([p for p in parts if p.shape[0]], axis=0)
