"""Ordered processor chains: how several techniques share one attention site.

Upstream's hooks hold one processor per (block id, kind). The plugin installs
one ``SiteChain`` there, and every technique adds a link to it. A link is
``link(call, next) -> output``: it may change the call (memory, additive mask,
probability transforms and observers) and pass it on with ``next(call)``, call
``next`` several times (injection blends two branches), or skip it. The end of
the chain is ``attend``: upstream's own fused attention unless a link asked for
the probabilities, and then the explicit path on this site only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from . import attention

ProbTransform = Callable[[mx.array, "Call"], mx.array]
ProbObserver = Callable[[mx.array, "Call"], None]


@dataclass(frozen=True)
class Call:
    """One attention call as a link sees it."""

    attn: nn.MultiHeadAttention
    x: mx.array
    memory: mx.array
    mask: Optional[mx.array]
    meta: Any  # upstream's hooks.AttentionMeta
    transforms: Tuple[ProbTransform, ...] = ()
    observers: Tuple[ProbObserver, ...] = ()
    branch: str = "base"
    guidance_pass: str = (
        "main"  # "perturbed": perturbed-attention guidance's extra pass
    )

    def with_(self, **changes) -> "Call":
        return replace(self, **changes)

    def add_bias(self, bias: mx.array) -> "Call":
        """The same call with an extra additive logit bias."""
        mask = bias if self.mask is None else self.mask + bias
        return replace(self, mask=mask)


Next = Callable[[Call], mx.array]
Link = Callable[[Call, Next], mx.array]


def attend(call: Call) -> mx.array:
    """The end of every chain."""
    if not call.transforms and not call.observers:
        return call.attn(call.x, call.memory, call.memory, call.mask)
    q, k, v = attention.project(call.attn, call.x, call.memory)
    probs = attention.probabilities(q, k, call.mask)
    for transform in call.transforms:
        probs = transform(probs, call)
    for observer in call.observers:
        observer(probs, call)
    return attention.from_probabilities(call.attn, probs, v)


@dataclass
class SiteChain:
    """The links of one site, in order; callable as an upstream processor."""

    links: List[Tuple[str, Link]] = field(default_factory=list)
    guidance_pass: str = "main"

    def add(self, name: str, link: Link) -> None:
        self.links.append((name, link))

    def __call__(self, attn, x, memory, mask, meta) -> mx.array:
        call = Call(attn, x, memory, mask, meta, guidance_pass=self.guidance_pass)
        return self._run(0, call)

    def _run(self, i: int, call: Call) -> mx.array:
        if i == len(self.links):
            return attend(call)
        return self.links[i][1](call, lambda c: self._run(i + 1, c))
