"""LyCORIS LoHa and LoKr layers rewritten exactly as low-rank ``up @ down`` pairs.

LoHa's update is ``(w1a @ w1b) * (w2a @ w2b)`` (elementwise), which equals
``up @ down`` with ``up`` the column-wise (Khatri-Rao) products of ``w1a`` and
``w2a`` and ``down`` the row-wise products of ``w1b`` and ``w2b`` (rank r^2).
LoKr's update is ``kron(w1, w2)``; with ``w = u @ v`` for each factor (a full
factor is paired with an identity) it equals ``kron(u1, u2) @ kron(v1, v2)``.
Both are then fused and applied like any LoRA. Arrays are in PyTorch layout,
with a conv's ``down`` flattened over (in, kh, kw) as LyCORIS stores it.
Scales follow LyCORIS's modules: ``alpha / dim`` (dim the factor rank), and 1
for a LoKr whose factors are both full.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import mlx.core as mx

LOHA_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_ROLES = (
    "lokr_w1",
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2",
    "lokr_w2_a",
    "lokr_w2_b",
)


class LycorisError(ValueError):
    """LoHa / LoKr tensors that do not form one layer."""


def kron(a: mx.array, b: mx.array) -> mx.array:
    """The Kronecker product of two matrices."""
    m, n = a.shape
    p, q = b.shape
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(m * p, n * q)


def _matrix(label: str, name: str, x: mx.array) -> mx.array:
    """``x`` as a matrix: 2-D as is, a conv kernel (O, I, kh, kw) flattened to (O, I*kh*kw)."""
    if x.ndim == 4:
        return x.reshape(x.shape[0], -1)
    if x.ndim != 2:
        raise LycorisError(f"{label}: {name} has shape {tuple(x.shape)}, expected 2-D")
    return x


def loha(
    label: str, parts: Dict[str, mx.array], alpha: Optional[float]
) -> Tuple[mx.array, mx.array, float]:
    """``(down, up, scale)`` of a LoHa layer (rank r^2)."""
    missing = [r for r in LOHA_ROLES if r not in parts]
    if missing:
        raise LycorisError(f"{label}: LoHa layer without {', '.join(missing)}")
    w1a, w1b, w2a, w2b = (
        _matrix(label, r, parts[r].astype(mx.float32)) for r in LOHA_ROLES
    )
    r1, r2 = w1b.shape[0], w2b.shape[0]
    if (
        w1a.shape != (w2a.shape[0], r1)
        or w2a.shape[1] != r2
        or w1b.shape[1] != w2b.shape[1]
    ):
        raise LycorisError(
            f"{label}: LoHa shapes do not fit: w1 {tuple(w1a.shape)} @ {tuple(w1b.shape)}, "
            f"w2 {tuple(w2a.shape)} @ {tuple(w2b.shape)}"
        )
    out, cols = w1a.shape[0], w1b.shape[1]
    up = (w1a[:, :, None] * w2a[:, None, :]).reshape(out, r1 * r2)
    down = (w1b[:, None, :] * w2b[None, :, :]).reshape(r1 * r2, cols)
    return down, up, (alpha if alpha is not None else r1) / r1


def _factor(
    label: str, parts: Dict[str, mx.array], side: str
) -> Tuple[mx.array, mx.array, Optional[int]]:
    """``(u, v, rank)`` with ``u @ v`` the LoKr factor ``side`` (rank None when it is full)."""
    full = parts.get(f"lokr_{side}")
    a, b = parts.get(f"lokr_{side}_a"), parts.get(f"lokr_{side}_b")
    if (full is None) == (a is None or b is None) or (a is None) != (b is None):
        raise LycorisError(
            f"{label}: LoKr needs lokr_{side} or both lokr_{side}_a and lokr_{side}_b"
        )
    if full is not None:
        w = _matrix(label, f"lokr_{side}", full.astype(mx.float32))
        m, n = w.shape
        if m <= n:  # the identity on the smaller side keeps the rank low
            return mx.eye(m), w, None
        return w, mx.eye(n), None
    u = _matrix(label, f"lokr_{side}_a", a.astype(mx.float32))
    v = _matrix(label, f"lokr_{side}_b", b.astype(mx.float32))
    if u.shape[1] != v.shape[0]:
        raise LycorisError(
            f"{label}: lokr_{side}_a {tuple(u.shape)} and lokr_{side}_b "
            f"{tuple(v.shape)} do not multiply"
        )
    return u, v, int(v.shape[0])


def lokr(
    label: str, parts: Dict[str, mx.array], alpha: Optional[float]
) -> Tuple[mx.array, mx.array, float]:
    """``(down, up, scale)`` of a LoKr layer."""
    u1, v1, r1 = _factor(label, parts, "w1")
    u2, v2, r2 = _factor(label, parts, "w2")
    dim = r1 if r1 is not None else r2
    scale = 1.0 if dim is None or alpha is None else alpha / dim
    return kron(v1, v2), kron(u1, u2), scale
