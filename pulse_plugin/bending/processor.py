"""Attention bending in the UNet: chain links, windows, visualise-only vs apply.

A bend acts on the cross-attention probabilities of its token columns, on the
conditional rows by default, only on the sites its ``apply_to_layers`` selects
and only inside its step/sigma window. Only sites with a bend configured get a
link, so every other site keeps upstream's fused kernel. In the visualise phase
the link is an observer: bent maps are recorded and the attention output is
computed from the unbent probabilities (bit-identical to a plain run in float32
on the CPU). In the apply phase the bent probabilities drive the output.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np

from .. import tokens
from ..chain import Call, Link, Next
from ..sampling import final_latents
from . import transforms as T
from .config import BendConfig, BendingSettings, ConfigError, parse_prompt


@dataclass(frozen=True)
class ResolvedBend:
    """A bend with its token columns and the block ids it acts on."""

    config: BendConfig
    positions: Tuple[int, ...]
    blocks: frozenset


@dataclass
class BendRecord:
    """One bent map: summed over the bend's tokens, averaged over heads and rows."""

    label: str
    step_idx: Optional[int]
    sigma: Optional[float]
    block_id: str
    original: np.ndarray  # (H, W)
    bent: np.ndarray  # (H, W)


def cross_sites(pipe) -> List[str]:
    """The UNet's attention block ids in execution order."""
    return list(pipe.unet.hooks.sites)


def resolve_layers(pipe, layers: Optional[Sequence], field_name: str) -> List[str]:
    """Block ids selected by ints (index in execution order) and/or block selectors."""
    sites = cross_sites(pipe)
    if layers is None:
        return sites
    chosen = set()
    for item in layers:
        if isinstance(item, int):
            if not 0 <= item < len(sites):
                raise ConfigError(
                    f"{field_name}: layer {item} out of range; this model has "
                    f"{len(sites)} attention sites (0..{len(sites) - 1}): {sites}"
                )
            chosen.add(sites[item])
        else:
            try:
                chosen.update(_select(pipe, item))
            except ValueError as e:
                raise ConfigError(f"{field_name}: {e}") from None
    return [s for s in sites if s in chosen]


def _select(pipe, name: str) -> List[str]:
    """Block ids for one selector name (pulse_plugin.selectors when present)."""
    try:
        from .. import selectors
    except ImportError:  # pragma: no cover - before selectors.py existed
        sites = cross_sites(pipe)
        key = name.strip().lower()
        found = [
            s for s in sites if key == "all" or s == key or s.startswith(key + ".")
        ]
        if not found:
            raise ValueError(
                f"block {name!r} matches no attention site; sites: {sites}"
            )
        return found
    return selectors.resolve(name, selectors.describe(pipe.unet))


def token_positions(pipe, clean_prompt: str, word: str) -> List[int]:
    """Token positions (BOS = 0) of word in the prompt, all BPE pieces included."""
    return tokens.find_phrase_pipeline(pipe, clean_prompt, word)


def resolve_bends(
    pipe, prompt: str, bends: Sequence[BendConfig]
) -> Tuple[str, List[ResolvedBend]]:
    """Remove the parentheses, check each bend's token and find its columns and blocks."""
    clean, bendable = parse_prompt(prompt)
    allowed = bendable or [w.text for w in tokens.words(_tokenizer(pipe), clean)]
    out = []
    for i, b in enumerate(bends):
        name = f"bends[{i}]"
        if tokens.clean(b.token).strip() not in [tokens.clean(w) for w in allowed]:
            raise ConfigError(
                f"{name}.token: {b.token!r} is not a bendable word of the prompt "
                f"{prompt!r}; bendable words: {allowed}"
            )
        positions = token_positions(pipe, clean, b.token)
        blocks = resolve_layers(pipe, b.apply_to_layers, f"{name}.apply_to_layers")
        out.append(ResolvedBend(b, tuple(positions), frozenset(blocks)))
    return clean, out


def _tokenizer(pipe):
    return getattr(pipe, "tokenizer", None) or pipe.tokenizer_1


def in_window(c: BendConfig, step_idx: Optional[int], sigma: Optional[float]) -> bool:
    """Whether a step is inside the bend's step window [start, end) and sigma range."""
    if c.apply_to_timesteps is not None:
        if (
            step_idx is None
            or not c.apply_to_timesteps[0] <= step_idx < c.apply_to_timesteps[1]
        ):
            return False
    if c.sigma_range is not None:
        if sigma is None or not c.sigma_range[0] <= sigma <= c.sigma_range[1]:
            return False
    return True


def bend_columns(
    probs: mx.array, shape: Tuple[int, int], positions: Sequence[int], c: BendConfig
) -> Tuple[mx.array, mx.array, mx.array, mx.array]:
    """Bend the token columns of probs (B, heads, H*W, Nk).

    Returns (new probs, non-finite count, original maps, bent maps); the maps
    are (B, heads, n_tokens, H, W).
    """
    b, h, nq, nk = probs.shape
    height, width = shape
    n = len(positions)
    cols = mx.take(probs, mx.array(list(positions)), axis=-1)
    maps = cols.transpose(0, 1, 3, 2).reshape(b, h, n, height, width)
    bent, bad = T.bend_map(maps, c.mode, c.strength, **c.transform_kwargs())
    new_cols = bent.reshape(b, h, n, nq).transpose(0, 1, 3, 2)
    where = np.zeros(nk, np.int32)
    where[list(positions)] = np.arange(n)
    is_bent = np.zeros(nk, bool)
    is_bent[list(positions)] = True
    scattered = mx.take(new_cols, mx.array(where), axis=-1)
    out = mx.where(mx.array(is_bent), scattered, probs)
    if c.renormalize:
        out = T.renormalize(out)
    return out, bad, maps, bent


def _rows(meta, c: BendConfig) -> slice:
    if c.apply_to_uncond or meta.uncond_rows is None:
        return slice(0, None)
    return meta.cond_rows


def bend_probabilities(
    probs: mx.array,
    meta,
    bends: Sequence[ResolvedBend],
    on_bent=None,
) -> mx.array:
    """All active bends, in order, on their rows of probs; on_bent(bend, bad, orig, bent) sees each."""
    for rb in bends:
        if rb.config.strength == 0:
            continue
        rows = _rows(meta, rb.config)
        start, stop, _ = rows.indices(probs.shape[0])
        part, bad, orig, bent = bend_columns(
            probs[start:stop], meta.spatial_shape, rb.positions, rb.config
        )
        probs = mx.concatenate([probs[:start], part, probs[stop:]], axis=0)
        if on_bent is not None:
            on_bent(rb, bad, orig, bent)
    return probs


@dataclass
class BendLink:
    """The chain link of one Bender: transforms (apply) or observes (visualise)."""

    bends: Sequence[ResolvedBend]
    apply: bool
    record: bool
    pending: List[tuple] = field(default_factory=list)

    def active(self, meta) -> List[ResolvedBend]:
        return [
            rb
            for rb in self.bends
            if meta.kind == "cross"
            and meta.block_id in rb.blocks
            and in_window(rb.config, meta.step_idx, meta.sigma)
        ]

    def __call__(self, call: Call, next: Next) -> mx.array:
        active = self.active(call.meta)
        if not active or call.branch != "base":  # injected branches have other tokens
            return next(call)
        if self.apply:
            fn = partial(self._transform, active)
            return next(call.with_(transforms=call.transforms + (fn,)))
        fn = partial(self._observe, active)
        return next(call.with_(observers=call.observers + (fn,)))

    def _note(self, meta, rb: ResolvedBend, bad, orig, bent) -> None:
        maps = None
        if self.record:
            # (B, heads, n, H, W) -> (H, W): mean over rows and heads, sum over the word's tokens
            maps = (orig.mean(axis=(0, 1)).sum(0), bent.mean(axis=(0, 1)).sum(0))
        self.pending.append(
            (rb.config.label, meta.step_idx, meta.sigma, meta.block_id, bad, maps)
        )

    def _transform(self, active, probs: mx.array, call: Call) -> mx.array:
        return bend_probabilities(
            probs, call.meta, active, partial(self._note, call.meta)
        )

    def _observe(self, active, probs: mx.array, call: Call) -> None:
        bend_probabilities(probs, call.meta, active, partial(self._note, call.meta))

    def arrays(self) -> List[mx.array]:
        """The lazy arrays still to evaluate (pass them to mx.eval with the latents)."""
        out = []
        for *_, bad, maps in self.pending:
            out.append(bad)
            if maps is not None:
                out.extend(maps)
        return out


class InstalledLinks:
    """Mixin: ``with obj:`` adds ``obj.links()`` through a Pulse; exit flushes, then restores.

    Subclasses set ``pipe``, ``install_name`` and ``observe_steps`` (also call
    ``flush`` after every denoising step) and define ``links`` and ``flush``.
    """

    install_name = ""
    observe_steps = False

    def attach(self, pulse):
        """Add the links to a pulse_plugin.pulse.Pulse; call flush() after generating."""
        for (block_id, kind), link in self.links().items():
            pulse.add_link(block_id, kind, link, name=self.install_name)
        return self

    def __enter__(self):
        observer = self.flush if self.observe_steps else None
        self._exit = install(
            self.pipe, self.links(), self.install_name, observer=observer
        )
        self._exit.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.flush()
        finally:
            self._exit.__exit__(*exc)
            self._exit = None


class Bender(InstalledLinks):
    """Attention bending on a patched pipeline, as a context manager.

    ``with Bender(pipe, "a romantic (kiss) at (sunset)", settings) as b:`` then
    generate with ``b.prompt`` (the prompt without parentheses); ``b.records``
    holds the bent maps, ``b.nonfinite`` the guarded values per bend.
    """

    install_name = "bending"
    observe_steps = True

    def __init__(
        self,
        pipe,
        prompt: str,
        settings: Union[BendingSettings, Sequence[BendConfig]],
        apply_to_output: Optional[bool] = None,
    ):
        if not isinstance(settings, BendingSettings):
            settings = BendingSettings(list(settings))
        if apply_to_output is not None:
            settings.apply_to_output = apply_to_output
        self.pipe = pipe
        self.settings = settings
        bends = settings.bends if settings.enabled else []
        self.prompt, self.bends = resolve_bends(pipe, prompt, bends)
        self.link = BendLink(self.bends, settings.apply_to_output, settings.record)
        self.records: List[BendRecord] = []
        self.nonfinite: Dict[str, int] = {}
        self._exit = None

    @property
    def blocks(self) -> List[str]:
        """The sites that get a link (every other site keeps the fused kernel)."""
        used = set().union(*(rb.blocks for rb in self.bends)) if self.bends else set()
        return [s for s in cross_sites(self.pipe) if s in used]

    def links(self) -> Dict[Tuple[str, str], Link]:
        """(block id, kind) -> link, for a caller that owns the chains."""
        return {(b, "cross"): self.link for b in self.blocks}

    def flush(self, *_) -> None:
        """Evaluate pending maps into records and warn about guarded non-finite values."""
        pending, self.link.pending = self.link.pending, []
        if not pending:
            return
        mx.eval([a for p in pending for a in ([p[4]] + list(p[5] or ()))])
        for label, step, sigma, block, bad, maps in pending:
            n = int(bad.item())
            if n:
                if label not in self.nonfinite:
                    warnings.warn(
                        f"bend {label!r}: {n} non-finite values at step {step}, block "
                        f"{block} were replaced by the unbent attention",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                self.nonfinite[label] = self.nonfinite.get(label, 0) + n
            if maps is not None:
                orig, bent = (np.array(m, dtype=np.float32) for m in maps)
                self.records.append(BendRecord(label, step, sigma, block, orig, bent))


@contextmanager
def install(
    pipe, links: Dict[Tuple[str, str], Link], name: str, observer=None
) -> Iterator[None]:
    """Add links on their sites through a Pulse (and a step observer); restore on exit."""
    from ..pulse import Pulse

    pulse = Pulse(pipe)
    for (block_id, kind), link in links.items():
        pulse.add_link(block_id, kind, link, name=name)
    if observer is not None:
        pulse.add_observer(observer)
    with pulse:
        yield


def generate(
    pipe,
    prompt: str,
    settings: Union[BendingSettings, Sequence[BendConfig]],
    apply_to_output: Optional[bool] = None,
    num_steps: int = 4,
    cfg_weight: float = 7.5,
    latent_size: Optional[Tuple[int, int]] = None,
    seed: int = 0,
    negative_text: str = "",
) -> Tuple[mx.array, Bender]:
    """Generate latents with bending; returns (final latents, the Bender with its records)."""
    bender = Bender(pipe, prompt, settings, apply_to_output)
    with bender:
        x = final_latents(
            pipe,
            bender.prompt,
            num_steps=num_steps,
            cfg_weight=cfg_weight,
            latent_size=latent_size,
            seed=seed,
            negative_text=negative_text,
            extra=bender.link.arrays,
        )
    return x, bender
