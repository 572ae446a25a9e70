"""Perturbed-attention guidance (Ahn et al., ECCV 2024).

Each guided step runs one more UNet pass on the conditional rows in which the
selected sites' self-attention is the identity map (every query attends only to
itself, so the output is the value projection), and guides away from it:

    eps = eps_u + cfg * (eps_c - eps_u) + s * (eps_c - eps_perturbed)

(without classifier-free guidance, ``eps_c + s * (eps_c - eps_perturbed)``).
The extra pass goes through the same attention chains as the main one, so every
other technique acts on it too and the guidance direction is the perturbation's
alone; capture ignores it. The plugin runs its own denoising step for this: while
a Pulse with this technique is active, ``pipe._denoising_step`` is replaced by
one that does upstream's step plus the extra pass (upstream's loop, sampler and
schedule are untouched, so text-to-image, image-to-image, SD and SDXL all work).
Outside the window, or where ``s`` is 0, the step is upstream's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Union

import mlx.core as mx

from ..chain import Call, Next, SiteChain
from .base import Technique

Scale = Union[float, Callable[[float], float]]


def guided_eps(eps_c, eps_u, eps_p, cfg_weight: float, scale: float):
    """The guided prediction; eps_u is None when classifier-free guidance is off."""
    eps = eps_c if eps_u is None else eps_u + cfg_weight * (eps_c - eps_u)
    return eps + scale * (eps_c - eps_p)


def identity_attention(attn, x: mx.array) -> mx.array:
    """Self-attention whose map is the identity: out_proj(value_proj(x))."""
    return attn.out_proj(attn.value_proj(x))


@dataclass
class PerturbedAttention(Technique):
    """Guide away from a pass with identity self-attention at the selected sites."""

    scale: Scale = 3.0

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "self":
            raise ValueError(
                "kind: perturbed-attention guidance perturbs self-attention"
            )
        if not callable(self.scale):
            self._check(self.scale, "scale")
        self._original = None

    @staticmethod
    def _check(value, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{what}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{what}: expected a finite number, got {value!r}")
        return float(value)

    def scale_at(self, step) -> float:
        """s for this step (0 outside the window)."""
        if step is None or not self.window.contains(step.step_idx, step.sigma):
            return 0.0
        if callable(self.scale):
            return self._check(self.scale(step.sigma), f"scale({step.sigma:.4g})")
        return float(self.scale)

    def link(self, call: Call, next: Next) -> mx.array:
        if call.guidance_pass == "perturbed" and call.branch == "base":
            return identity_attention(call.attn, call.x)
        return next(call)

    # ---------------------------------------------------- the denoising step
    def enter(self, pipe) -> None:
        if "_denoising_step" in vars(pipe):
            raise ValueError(
                "perturbed-attention guidance is already active on this pipeline"
            )
        self._original = pipe._denoising_step
        pipe._denoising_step = lambda *a, **k: self._step(pipe, *a, **k)

    def exit(self, pipe) -> None:
        if self._original is not None:
            vars(pipe).pop("_denoising_step", None)
            self._original = None

    def _step(self, pipe, x_t, t, t_prev, conditioning, cfg_weight=7.5, text_time=None):
        hooks = pipe.unet.hooks
        scale = self.scale_at(hooks.step)
        if scale == 0.0:
            return self._original(x_t, t, t_prev, conditioning, cfg_weight, text_time)
        cfg = cfg_weight > 1
        x_unet = mx.concatenate([x_t] * 2, axis=0) if cfg else x_t
        eps = pipe.unet(
            x_unet,
            mx.broadcast_to(t, [len(x_unet)]),
            encoder_x=conditioning,
            text_time=text_time,
        )
        eps_c, eps_u = eps.split(2) if cfg else (eps, None)
        eps_p = self._perturbed(pipe, x_t, t, conditioning, text_time)
        eps = guided_eps(eps_c, eps_u, eps_p, cfg_weight, scale)
        return pipe.sampler.step(eps, x_t, t, t_prev)

    def _perturbed(self, pipe, x_t, t, conditioning, text_time) -> mx.array:
        """The UNet on the conditional rows alone, with the selected sites perturbed."""
        n = len(x_t)
        hooks = pipe.unet.hooks
        chains = [p for p in hooks.processors.values() if isinstance(p, SiteChain)]
        saved = hooks.step
        hooks.step = replace(saved, cfg=False)
        for chain in chains:
            chain.guidance_pass = "perturbed"
        try:
            return pipe.unet(
                x_t,
                mx.broadcast_to(t, [n]),
                encoder_x=conditioning[:n],
                text_time=(
                    None if text_time is None else tuple(a[:n] for a in text_time)
                ),
            )
        finally:
            hooks.step = saved
            for chain in chains:
                chain.guidance_pass = "main"
