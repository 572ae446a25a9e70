"""Prompt injection: another prompt's embedding drives the selected cross-attentions.

``weight`` (mode ``"blend"``, the default) blends attention outputs on the
conditional rows: ``out = base + weight * (injected - base)``, i.e.
``(1 - w) * base + w * injected``; 0 is the identity, 1 is full replacement,
> 1 extrapolates away from the base prompt. The injected branch computes its
own keys and values from the injected embedding, so its token length need
not match the base prompt's. Mode ``"corepulse"`` reproduces CorePulse's
semantics for porting recipes: the injected embedding multiplied by
``weight`` replaces the keys/values source, no blend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import mlx.core as mx

from .. import checks
from ..chain import Call, Next
from ..tokens import check_prompt
from .base import Technique, active_rows, blend

MODES = ("blend", "corepulse")


def encode_prompt(pipe, prompt: str) -> mx.array:
    """The (1, T, D) text embedding upstream's pipeline computes for prompt."""
    check_prompt(pipe, prompt)
    if hasattr(pipe, "text_encoder_2"):
        c1 = pipe.text_encoder_1(pipe._tokenize(pipe.tokenizer_1, prompt))
        c2 = pipe.text_encoder_2(pipe._tokenize(pipe.tokenizer_2, prompt))
        emb = mx.concatenate([c1.hidden_states[-2], c2.hidden_states[-2]], axis=-1)
    else:
        emb = pipe.text_encoder(
            pipe._tokenize(pipe.tokenizer, prompt)
        ).last_hidden_state
    emb = emb.astype(pipe.dtype)
    mx.eval(emb)
    return emb


def injected_branch(
    call: Call, embedding: mx.array, rows: slice, next: Next
) -> mx.array:
    """The rest of the chain on the edited rows, with keys/values from embedding.

    Probability transforms and observers added before this link belong to the
    base prompt's tokens, so the injected branch starts without them.
    """
    x = call.x[rows]
    memory = mx.broadcast_to(embedding, (x.shape[0],) + embedding.shape[1:])
    meta = dataclasses.replace(
        call.meta, cond_rows=slice(0, x.shape[0]), uncond_rows=None
    )
    branch = call.with_(
        x=x,
        memory=memory,
        mask=None,
        meta=meta,
        branch="inject",
        transforms=(),
        observers=(),
    )
    return next(branch)


@dataclass
class Injection(Technique):
    """Inject a prompt's embedding into the selected cross-attention sites."""

    prompt: str = ""
    embedding: Optional[mx.array] = None
    weight: float = 1.0
    mode: str = "blend"

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "cross":
            raise ValueError("kind: prompt injection acts on cross-attention only")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        self.weight = checks.number("weight", self.weight, 0.0)
        if self.embedding is None or self.embedding.ndim != 3:
            raise ValueError("embedding: expected a (1, T, D) text embedding")

    def link(self, call: Call, next: Next) -> mx.array:
        if not self.active(call):
            return next(call)
        rows = active_rows(call, self.rows)
        if self.mode == "corepulse":
            injected = injected_branch(call, self.embedding * self.weight, rows, next)
            if rows == slice(0, len(call.x)):
                return injected
            return _replace_rows(next(call), injected, rows)
        base = next(call)
        injected = injected_branch(call, self.embedding, rows, next)
        return blend(base, injected, self.weight, rows)


def _replace_rows(base: mx.array, rows_out: mx.array, rows: slice) -> mx.array:
    """base with rows replaced by rows_out."""
    parts = [base[: rows.start], rows_out, base[rows.stop :]]
    return mx.concatenate([p for p in parts if p.shape[0]], axis=0)


class AdvancedPromptInjector:
    """CorePulse's AdvancedPromptInjector over a Pulse: several injections at once."""

    def __init__(self, pulse):
        self.pulse = pulse

    def add_injection(
        self,
        block,
        prompt: str,
        weight: float = 1.0,
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        **kwargs,
    ) -> Injection:
        return self.pulse.inject(
            block, prompt, weight, sigma_start, sigma_end, **kwargs
        )


class MultiScaleInjector(AdvancedPromptInjector):
    """CorePulse's MultiScaleInjector: prompts per resolution level."""

    def add_structure_injection(self, prompt: str, weight: float = 1.0, **kwargs):
        """Lowest-resolution sites: composition and layout."""
        return self.add_injection("structure", prompt, weight, **kwargs)

    def add_midlevel_injection(self, prompt: str, weight: float = 1.0, **kwargs):
        """Sites between the lowest and highest resolutions (models with 3+ levels)."""
        return self.add_injection("mid-level", prompt, weight, **kwargs)

    def add_detail_injection(self, prompt: str, weight: float = 1.0, **kwargs):
        """Highest-resolution sites: texture and fine detail."""
        return self.add_injection("detail", prompt, weight, **kwargs)

    def add_hierarchical_injection(
        self,
        structure: Optional[str] = None,
        midlevel: Optional[str] = None,
        detail: Optional[str] = None,
        weight: float = 1.0,
        **kwargs,
    ) -> Tuple[Injection, ...]:
        """Up to three prompts at once, one per level."""
        out = []
        for sel, prompt in (
            ("structure", structure),
            ("mid-level", midlevel),
            ("detail", detail),
        ):
            if prompt is not None:
                out.append(self.add_injection(sel, prompt, weight, **kwargs))
        return tuple(out)
