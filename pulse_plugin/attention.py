"""Attention primitives over an upstream ``nn.MultiHeadAttention``.

``fused`` runs MLX's fused kernel (with an optional additive bias); the
explicit ``probabilities`` path exists only for techniques that must read or
reshape the attention map. In float32 on the CPU the two agree bit for bit
(tests/test_attention.py checks it).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import mlx.core as mx
import mlx.nn as nn


def split_heads(x: mx.array, num_heads: int) -> mx.array:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    return mx.unflatten(x, -1, (num_heads, -1)).transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    return x.transpose(0, 2, 1, 3).flatten(-2, -1)


def project(
    attn: nn.MultiHeadAttention, x: mx.array, memory: mx.array
) -> Tuple[mx.array, mx.array, mx.array]:
    """Queries from x, keys and values from memory, split into heads."""
    q = split_heads(attn.query_proj(x), attn.num_heads)
    k = split_heads(attn.key_proj(memory), attn.num_heads)
    v = split_heads(attn.value_proj(memory), attn.num_heads)
    return q, k, v


def scale_of(q: mx.array) -> float:
    return math.sqrt(1 / q.shape[-1])


def fused(
    attn: nn.MultiHeadAttention,
    q: mx.array,
    k: mx.array,
    v: mx.array,
    bias: Optional[mx.array] = None,
) -> mx.array:
    """Attention output through the fused kernel, with an additive logit bias."""
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale_of(q), mask=bias)
    return attn.out_proj(merge_heads(out))


def probabilities(
    q: mx.array, k: mx.array, bias: Optional[mx.array] = None
) -> mx.array:
    """Attention probabilities (B, heads, Nq, Nk), in the fused kernel's order of operations."""
    logits = (q * scale_of(q)) @ k.swapaxes(-1, -2)
    if bias is not None:
        logits = logits + bias
    return mx.softmax(logits, axis=-1, precise=True)


def from_probabilities(
    attn: nn.MultiHeadAttention, probs: mx.array, v: mx.array
) -> mx.array:
    """Attention output from explicit probabilities."""
    return attn.out_proj(merge_heads(probs @ v))
