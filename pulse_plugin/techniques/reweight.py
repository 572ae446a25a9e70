"""Token attention re-weighting and masking on cross-attention.

Mode ``"prob"`` (default): the selected tokens' attention probabilities are
multiplied by ``scale`` and renormalised, done as an additive logit bias
``log(scale)`` inside the fused kernel (``scale = 0`` is ``-inf``: the token
is masked out). With a spatial mask ``m`` the effective scale at a query is
``1 + m * (scale - 1)``. Mode ``"logit"`` is CorePulse's: the selected
tokens' logits are multiplied by ``scale`` (as the bias ``(scale - 1) * logit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import mlx.core as mx
import numpy as np

from .. import attention, checks
from ..chain import Call, Next
from ..masks import resize
from .base import Technique, active_rows, row_mask

MODES = ("prob", "logit")


def log_bias(scales: np.ndarray, spatial: Optional[np.ndarray]) -> np.ndarray:
    """(Nq or 1, T) bias log(1 + m * (s - 1)) for per-token scales s and spatial weights m."""
    m = np.ones((1, 1), np.float64) if spatial is None else spatial.reshape(-1, 1)
    eff = 1.0 + m * (scales.reshape(1, -1).astype(np.float64) - 1.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.maximum(eff, 0.0))
    if np.any(np.all(np.isneginf(out), axis=-1)):
        raise ValueError(
            "the mask removes every token of some query: nothing to attend to"
        )
    return out.astype(np.float32)


def rows_bias(bias2d: np.ndarray, batch: int, rows: slice) -> np.ndarray:
    """(batch, 1, Nq, T): bias on the edited rows, 0 on the others (never -inf * 0)."""
    keep = row_mask(batch, rows)[:, None, None, None] > 0
    return np.where(keep, bias2d[None, None], np.float32(0)).astype(np.float32)


@dataclass
class TokenReweight(Technique):
    """Scale (or mask, scale 0) attention to token positions; keep_only masks all others."""

    positions: Tuple[int, ...] = ()
    scale: float = 1.0
    mode: str = "prob"
    mask: Optional[np.ndarray] = None
    keep_only: bool = False
    keep_bos: bool = True
    _cache: Dict[tuple, mx.array] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "cross":
            raise ValueError("kind: token re-weighting acts on cross-attention only")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        self.scale = checks.number("scale", self.scale, 0.0)
        if self.mode == "logit" and self.keep_only:
            raise ValueError("mode: keep_only works with mode='prob' only")
        if not self.positions:
            raise ValueError("positions: expected at least one token position")

    def token_scales(self, length: int) -> np.ndarray:
        """(T,) per-token scale: 1 untouched, scale on the positions (keep_only: 0 elsewhere)."""
        if max(self.positions) >= length:
            raise ValueError(
                f"positions {list(self.positions)} do not fit the prompt's {length} tokens:"
                " is the prompt given to Pulse the one being generated?"
            )
        if self.keep_only:
            s = np.zeros(length, np.float64)
            s[list(self.positions)] = 1.0
            if self.keep_bos:
                s[0] = 1.0
            return s
        s = np.ones(length, np.float64)
        s[list(self.positions)] = self.scale
        return s

    def _spatial(self, call: Call) -> Optional[np.ndarray]:
        if self.mask is None:
            return None
        return resize(self.mask, call.meta.spatial_shape).reshape(-1)

    def _per_rows(self, call: Call, tag: str, make: Callable) -> mx.array:
        """rows_bias of make(call) (queries x keys) for this call's shape, built once."""
        rows = active_rows(call, self.rows)
        key = (
            tag,
            len(call.x),
            call.memory.shape[1],
            call.meta.spatial_shape,
            rows.start,
            rows.stop,
        )
        if key not in self._cache:
            self._cache[key] = mx.array(
                rows_bias(make(call), len(call.x), rows)
            ).astype(call.x.dtype)
        return self._cache[key]

    def _bias(self, call: Call) -> mx.array:
        return self._per_rows(call, "prob", self._log_bias)

    def _log_bias(self, call: Call) -> np.ndarray:
        scales = self.token_scales(call.memory.shape[1])
        return log_bias(scales, self._spatial(call))

    def _logit_coef(self, call: Call) -> mx.array:
        return self._per_rows(call, "logit", self._logit_coef2d)

    def _logit_coef2d(self, call: Call) -> np.ndarray:
        onehot = np.zeros(call.memory.shape[1], np.float64)
        onehot[list(self.positions)] = 1.0
        m = self._spatial(call)
        m = np.ones((1, 1)) if m is None else m.reshape(-1, 1)
        return (m * onehot[None] * (self.scale - 1.0)).astype(np.float32)

    def link(self, call: Call, next: Next) -> mx.array:
        if not self.active(call) or (self.scale == 1.0 and not self.keep_only):
            return next(call)
        if self.mode == "prob":
            return next(call.add_bias(self._bias(call)))
        self.token_scales(call.memory.shape[1])  # checks the positions fit
        q = attention.split_heads(call.attn.query_proj(call.x), call.attn.num_heads)
        k = attention.split_heads(call.attn.key_proj(call.memory), call.attn.num_heads)
        logits = (q * attention.scale_of(q)) @ k.swapaxes(-1, -2)
        return next(call.add_bias(self._logit_coef(call) * logits))
