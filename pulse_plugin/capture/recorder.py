"""Record real cross-attention probabilities per token and step, DAAM-style.

A ``Recorder`` adds an observer link on the cross-attention sites it watches
(those sites take the explicit probabilities path, which equals the fused
kernel bit for bit in float32 on the CPU, so the image does not change). Each
call is reduced at once: conditional rows and heads are averaged, the (H, W)
map of every token is upsampled to one common size and summed over blocks.
Only that (Nk, S, S) sum lives during a step; at the step's end it becomes
one float32 array per step, so memory is steps * Nk * S * S * 4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np

from ..bending import transforms as T
from ..bending.processor import InstalledLinks, resolve_layers
from ..chain import Call, Link, Next


@dataclass
class StepMaps:
    """Head- and block-averaged attention of one denoising step: maps (Nk, S, S)."""

    step_idx: Optional[int]
    timestep: Optional[float]
    sigma: Optional[float]
    maps: np.ndarray
    calls: int
    row_sum_error: float  # max |sum over tokens - 1| of the raw per-head probabilities


@dataclass
class Recorder(InstalledLinks):
    """Observer link aggregating cross-attention into per-token maps at a common size."""

    install_name = "capture"

    pipe: object
    size: Tuple[int, int]
    blocks: Optional[Union[str, Sequence]] = None
    steps: List[StepMaps] = field(default_factory=list)

    def __post_init__(self) -> None:
        layers = (
            None
            if self.blocks is None
            else (
                [self.blocks]
                if isinstance(self.blocks, (str, int))
                else list(self.blocks)
            )
        )
        self.block_ids = resolve_layers(self.pipe, layers, "blocks")
        self._acc: Optional[mx.array] = None
        self._err: Optional[mx.array] = None
        self._calls = 0
        self._step = None
        self._exit = None

    def link(self, call: Call, next: Next) -> mx.array:
        """The chain link: observe the probabilities of watched cross-attention calls."""
        watched = call.meta.kind == "cross" and call.meta.block_id in self.block_ids
        if not watched or call.branch != "base":  # injected branches have other tokens
            return next(call)
        if (
            call.guidance_pass != "main"
        ):  # guidance's extra pass is no part of the image's maps
            return next(call)
        return next(call.with_(observers=call.observers + (self.observe,)))

    def observe(self, probs: mx.array, call: Call) -> None:
        """Reduce one call's probabilities (B, heads, H*W, Nk) into the step's sum."""
        meta = call.meta
        if self._step is None or self._step.step_idx != meta.step_idx:
            self.flush()  # a new step began: close the previous one
            self._step = meta
        p = probs[meta.cond_rows]
        err = mx.abs(p.sum(axis=-1) - 1).max()
        h, w = meta.spatial_shape
        mean = p.mean(axis=(0, 1))  # (H*W, Nk)
        maps = mean.T.reshape(mean.shape[1], h, w)
        up = T.resize_bilinear(maps.astype(mx.float32), self.size)
        self._acc = up if self._acc is None else self._acc + up
        self._err = err if self._err is None else mx.maximum(self._err, err)
        self._calls += 1

    def arrays(self) -> List[mx.array]:
        """The lazy sums of the current step (evaluate them with the latents)."""
        return [a for a in (self._acc, self._err) if a is not None]

    def flush(self) -> None:
        """Store the current step's average map, if any call was observed."""
        if self._acc is None:
            return
        mx.eval(self._acc, self._err)
        info = self._step
        self.steps.append(
            StepMaps(
                getattr(info, "step_idx", None),
                getattr(info, "timestep", None),
                getattr(info, "sigma", None),
                np.array(self._acc / self._calls, dtype=np.float32),
                self._calls,
                float(self._err.item()),
            )
        )
        self._acc, self._err, self._calls = None, None, 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded maps."""
        return sum(s.maps.nbytes for s in self.steps)

    def mean_maps(self) -> np.ndarray:
        """The maps averaged over all recorded steps (Nk, S, S)."""
        return np.mean([s.maps for s in self.steps], axis=0)

    def check_probabilities(self, atol: float = 1e-4) -> float:
        """Largest deviation from 1 of a query's sum over tokens (raw rows and stored maps)."""
        if not self.steps:
            raise ValueError("no attention was recorded")
        raw = max(s.row_sum_error for s in self.steps)
        stored = max(float(np.abs(s.maps.sum(0) - 1).max()) for s in self.steps)
        worst = max(raw, stored)
        if worst > atol:
            raise AssertionError(
                f"recorded attention is not a distribution over tokens: rows sum to 1 "
                f"within {worst:.3g} (tolerance {atol})"
            )
        return worst

    def links(self) -> Dict[Tuple[str, str], Link]:
        return {(b, "cross"): self.link for b in self.block_ids}
