"""Self-attention control between spatial regions.

Queries in region A attend to keys in region B with their probabilities
scaled by ``scale`` and renormalised (an additive bias
``log(1 + a_i * b_j * (scale - 1))`` in the fused kernel): ``scale > 1``
enhances the interaction, ``< 1`` suppresses it, 0 cuts it. ``symmetric``
applies the same from B to A.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import mlx.core as mx
import numpy as np

from .. import checks
from ..chain import Call, Next
from ..masks import resize
from .base import Technique, active_rows, row_mask


def pair_weights(query: np.ndarray, key: np.ndarray, symmetric: bool) -> np.ndarray:
    """(N, N) weight of each (query, key) pair, in [0, 1]."""
    w = query.reshape(-1, 1) * key.reshape(1, -1)
    if symmetric:
        w = np.maximum(w, w.T)
    return w


def pair_bias(weights: np.ndarray, scale: float) -> np.ndarray:
    """log(1 + w * (scale - 1)), with -inf where the pair is cut."""
    with np.errstate(divide="ignore"):
        out = np.log(np.maximum(1.0 + weights.astype(np.float64) * (scale - 1.0), 0.0))
    if np.any(np.all(np.isneginf(out), axis=-1)):
        raise ValueError(
            "scale 0 with this key region cuts every key of some query: nothing to attend to"
        )
    return out.astype(np.float32)


@dataclass
class SelfAttentionControl(Technique):
    """Scale self-attention from a query region to a key region."""

    query_mask: np.ndarray = None
    key_mask: np.ndarray = None
    scale: float = 1.0
    symmetric: bool = False
    _cache: Dict[tuple, mx.array] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "self":
            raise ValueError("kind: self-attention control acts on self-attention only")
        self.scale = checks.number("scale", self.scale, 0.0)
        if self.query_mask is None or self.key_mask is None:
            raise ValueError("query_mask, key_mask: expected 2-D masks")

    def _bias(self, call: Call) -> mx.array:
        rows = active_rows(call, self.rows)
        shape = call.meta.spatial_shape
        key = (len(call.x), shape, rows.start, rows.stop)
        if key not in self._cache:
            w = pair_weights(
                resize(self.query_mask, shape),
                resize(self.key_mask, shape),
                self.symmetric,
            )
            bias = mx.array(pair_bias(w, self.scale))[None, None].astype(call.x.dtype)
            if rows != slice(0, len(call.x)):
                keep = mx.array(row_mask(len(call.x), rows) > 0)[:, None, None, None]
                bias = mx.where(keep, bias, mx.zeros((1,), bias.dtype))
            mx.eval(bias)
            self._cache[key] = bias
        return self._cache[key]

    def link(self, call: Call, next: Next) -> mx.array:
        if not self.active(call) or self.scale == 1.0:
            return next(call)
        return next(call.add_bias(self._bias(call)))
