"""AUTOMATIC1111's emphasis: token embeddings scaled, then the mean restored.

A1111 multiplies each token's text-encoder output by its weight and rescales the
whole embedding so that its mean is what it was. Every cross-attention site reads
the same embedding, so doing that to the memory at each selected site is the same
as doing it once to the conditioning. The mean is taken over the tokens upstream
encodes (upstream does not pad to 77 as A1111 does), per batch row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import mlx.core as mx
import numpy as np

from ..chain import Call, Next
from .base import Technique, active_rows, replace_rows


def weight_embeddings(z: mx.array, weights: mx.array) -> mx.array:
    """(rows, T, D) embeddings with token t scaled by weights[t], each row's mean kept."""
    original = z.mean(axis=(1, 2), keepdims=True)
    scaled = z * weights.reshape(1, -1, 1)
    return scaled * (original / scaled.mean(axis=(1, 2), keepdims=True))


@dataclass
class EmbeddingWeights(Technique):
    """Scale token positions' embeddings by their weights (A1111's emphasis)."""

    weights: Tuple[Tuple[int, float], ...] = ()

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "cross":
            raise ValueError("kind: embedding weights act on cross-attention only")
        if not self.weights:
            raise ValueError("weights: expected at least one (position, weight)")
        for position, weight in self.weights:
            if not np.isfinite(weight):
                raise ValueError(
                    f"weight of token {position}: expected finite, got {weight!r}"
                )

    def token_weights(self, length: int) -> np.ndarray:
        """(T,) float32: 1 everywhere but the weighted positions."""
        out = np.ones(length, np.float32)
        for position, weight in self.weights:
            if position >= length:
                raise ValueError(
                    f"token position {position} does not fit the prompt's {length} tokens:"
                    " is the prompt given to Pulse the one being generated?"
                )
            out[position] *= weight
        return out

    def link(self, call: Call, next: Next) -> mx.array:
        if not self.active(call):
            return next(call)
        rows = active_rows(call, self.rows)
        memory = call.memory
        weights = mx.array(self.token_weights(memory.shape[1])).astype(memory.dtype)
        edited = weight_embeddings(memory[rows], weights)
        return next(call.with_(memory=replace_rows(memory, edited, rows)))
