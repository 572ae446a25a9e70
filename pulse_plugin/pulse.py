"""``Pulse``: a context manager that runs CorePulse techniques on a patched upstream pipeline.

    with Pulse(sd, prompt="a red cat") as pulse:
        pulse.inject("mid", "a dog", weight=0.8, sigma_start=15, sigma_end=2)
        pulse.reweight("red", 2.0)
        for x_t in sd.generate_latents("a red cat", num_steps=30):
            ...

On entry the hooks switch is enabled and one ``SiteChain`` per (block, kind)
is registered; on exit (also on exceptions) the hooks' previous enabled flag,
processors, observers and step are restored exactly. Techniques added before
entry are installed on entry; techniques keep their configuration across
entries, so one Pulse can be re-entered. Entering a Pulse inside another
composes: the inner Pulse's links run first, then the outer's.

Techniques that need the prompt's tokens (re-weighting, masking) take
``prompt=`` or use the one given to ``Pulse(pipe, prompt=...)``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import mlx.core as mx

from . import patchset
from .chain import Call, Link, Next, SiteChain
from .masks import as_mask
from .schedule import PlannedStep, miss_message, planned_schedule
from .selectors import Selector, describe, resolve
from .techniques.base import Technique, window_of
from .techniques.injection import Injection, encode_prompt
from .techniques.regional import Region, RegionalInjection
from .techniques.reweight import TokenReweight
from .techniques.self_attention import SelfAttentionControl
from .tokens import find_phrase_pipeline

PATCH_COMMAND = "python tools/patchset.py apply PATH/TO/mlx-examples"
HOOKS_PATH = "stable_diffusion/stable_diffusion/hooks.py"
Key = Tuple[str, str]


class PulseError(Exception):
    """The pipeline cannot be driven by this plugin (unpatched, wrong patch version, misuse)."""


@functools.lru_cache(maxsize=None)
def expected_hooks_source() -> str:
    """The hooks.py this plugin's patch series produces, applied in memory."""
    series = patchset.load_series()
    only = []
    for patch in series:
        files = [f for f in patch.files if f.path == HOOKS_PATH]
        if files:
            only.append(patchset.Patch(patch.name, patch.subject, files, ""))
    tree = patchset.apply_in_memory(Path("/nonexistent-pulse-root"), only)
    text = tree.get(HOOKS_PATH)
    if text is None:
        raise PulseError(f"the patch series creates no {HOOKS_PATH}")
    return text


def check_patched(pipe) -> None:
    """PulseError unless pipe's UNet carries the hooks of this plugin's patch series."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise PulseError(
            "pipe: expected an upstream StableDiffusion(XL) object with .unet"
        )
    hooks = getattr(unet, "hooks", None)
    if hooks is None:
        raise PulseError(
            f"the stable_diffusion package of {type(pipe).__module__!r} is not patched "
            f"(its UNet has no .hooks); patch your mlx-examples checkout with: {PATCH_COMMAND}"
        )
    try:
        source = Path(inspect.getsourcefile(type(hooks))).read_text(encoding="utf-8")
    except (TypeError, OSError) as err:
        raise PulseError(
            f"cannot read the hooks module of {type(hooks)!r}: {err}"
        ) from err
    if source != expected_hooks_source():
        raise PulseError(
            f"the hooks module {inspect.getsourcefile(type(hooks))} is not the version this "
            "plugin's patch series produces; revert the old series "
            "(python tools/patchset.py revert PATH/TO/mlx-examples) and apply this one: "
            f"{PATCH_COMMAND}"
        )


class Pulse:
    """Techniques on a patched upstream pipeline, active inside ``with``."""

    def __init__(
        self,
        pipe,
        prompt: Optional[str] = None,
        num_steps: Optional[int] = None,
        strength: Optional[float] = None,
    ):
        check_patched(pipe)
        self.pipe = pipe
        self.hooks = pipe.unet.hooks
        self.sites = describe(pipe.unet)
        self.prompt = prompt
        self.num_steps = num_steps
        self.strength = strength
        self.techniques: List[Technique] = []
        self.links: Dict[Key, List[Tuple[str, Link]]] = {}
        self.visited: List = []
        self._embeddings: Dict[str, mx.array] = {}
        self._saved = None
        self._installed: Dict[Key, SiteChain] = {}
        self._warned: Set[Tuple[int, Tuple[Tuple[int, float], ...]]] = set()

    # ----------------------------------------------------------------- state
    @property
    def active(self) -> bool:
        return self._saved is not None

    def __enter__(self) -> "Pulse":
        if self.active:
            raise PulseError(
                "this Pulse is already active: exit it before entering again"
            )
        h = self.hooks
        self._saved = (h.enabled, dict(h.processors), list(h.observers), h.step)
        self.visited = []
        try:
            h.observers.append(self._observe)
            for key in self.links:
                self._install(key)
            h.enabled = True
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._restore()
        if exc_type is None:
            self._warn_missed(self.visited, "this generation")
        return False

    def _restore(self) -> None:
        enabled, processors, observers, step = self._saved
        h = self.hooks
        h.processors.clear()
        h.processors.update(processors)
        h.observers[:] = observers
        h.step = step
        h.enabled = enabled
        self._saved = None
        self._installed = {}

    def _observe(self, step) -> None:
        self.visited.append(step)

    def _install(self, key: Key) -> None:
        """Register this Pulse's chain for key, before whatever was there."""
        previous = self._saved[1].get(key)
        links = list(self.links[key])
        if isinstance(previous, SiteChain):
            links += previous.links
        elif previous is not None:
            links.append(("previous processor", _delegate(previous)))
        chain = SiteChain(links)
        self.hooks.processors.pop(key, None)
        self.hooks.register(key[0], key[1], chain)
        self._installed[key] = chain

    # ------------------------------------------------------------- plumbing
    def blocks(self, selector: Selector) -> List[str]:
        """Block ids selected by a selector on this pipeline."""
        return resolve(selector, self.sites)

    def add_link(
        self, block: Selector, kind: str, link: Link, name: str = "link"
    ) -> None:
        """Append a raw chain link on the selected sites (low level; techniques use it)."""
        if kind not in ("self", "cross"):
            raise ValueError(f"kind: expected 'self' or 'cross', got {kind!r}")
        for block_id in self.blocks(block):
            key = (block_id, kind)
            self.links.setdefault(key, []).append((name, link))
            if self.active:
                self._install(key)

    def add(self, technique: Technique) -> Technique:
        """Install a technique on its sites."""
        for block_id in technique.blocks:
            key = (block_id, technique.kind)
            self.links.setdefault(key, []).append((technique.name, technique.link))
            if self.active:
                self._install(key)
        self.techniques.append(technique)
        if self.num_steps is not None:
            self._warn_missed(
                self.plan(self.num_steps, self.strength),
                "the planned schedule",
                [technique],
            )
        return technique

    def clear(self) -> None:
        """Remove every technique and link (installed chains follow on the next entry)."""
        self.techniques.clear()
        self.links.clear()
        self._warned.clear()
        if self.active:
            for key in list(self._installed):
                self.hooks.processors.pop(key, None)
                previous = self._saved[1].get(key)
                if previous is not None:
                    self.hooks.processors[key] = previous
            self._installed = {}

    def embedding(self, prompt: str) -> mx.array:
        """The prompt's text embedding, computed once per prompt."""
        if prompt not in self._embeddings:
            self._embeddings[prompt] = encode_prompt(self.pipe, prompt)
        return self._embeddings[prompt]

    def positions(self, phrase: str, prompt: Optional[str] = None) -> List[int]:
        """Token positions of phrase in the prompt being generated."""
        prompt = prompt if prompt is not None else self.prompt
        if prompt is None:
            raise PulseError(
                "prompt: this technique needs the prompt being generated; pass prompt=... "
                "or create Pulse(pipe, prompt=...)"
            )
        return find_phrase_pipeline(self.pipe, prompt, phrase)

    # ---------------------------------------------------------------- windows
    def plan(
        self, num_steps: int, strength: Optional[float] = None
    ) -> List[PlannedStep]:
        """The steps upstream will visit for these settings."""
        return planned_schedule(self.pipe, num_steps, strength)

    def check_windows(
        self, num_steps: int, strength: Optional[float] = None
    ) -> List[str]:
        """Warn (and return the messages) for windows that match no planned step."""
        return self._warn_missed(
            self.plan(num_steps, strength), "the planned schedule", always=True
        )

    def _warn_missed(
        self,
        steps,
        what: str,
        techniques: Optional[Iterable[Technique]] = None,
        always: bool = False,
    ) -> List[str]:
        """Warn for windows that match none of steps: once per technique and schedule."""
        if not steps:
            return []
        schedule = tuple((s.step_idx, s.sigma) for s in steps)
        out = []
        for t in techniques if techniques is not None else self.techniques:
            if not t.window.matches(steps):
                msg = miss_message(
                    f"{t.name} on {list(t.blocks)} ({what})", t.window, steps
                )
                if always or (id(t), schedule) not in self._warned:
                    warnings.warn(msg, stacklevel=3)
                    self._warned.add((id(t), schedule))
                out.append(msg)
        return out

    # ------------------------------------------------------------- techniques
    def inject(
        self,
        block: Selector,
        prompt: str,
        weight: float = 1.0,
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        *,
        steps: Optional[Tuple[Optional[int], Optional[int]]] = None,
        mode: str = "blend",
        rows: str = "cond",
    ) -> Injection:
        """Inject prompt into the selected blocks' cross-attention (see techniques/injection.py)."""
        return self.add(
            Injection(
                tuple(self.blocks(block)),
                "cross",
                window_of(sigma_start, sigma_end, steps),
                rows,
                prompt=prompt,
                embedding=self.embedding(prompt),
                weight=weight,
                mode=mode,
            )
        )

    def reweight(
        self,
        phrase: str,
        scale: float,
        block: Selector = "all",
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        *,
        prompt: Optional[str] = None,
        mask=None,
        mode: str = "prob",
        steps: Optional[Tuple[Optional[int], Optional[int]]] = None,
        rows: str = "cond",
    ) -> TokenReweight:
        """Scale attention to phrase by scale (renormalised; 0 masks it), optionally inside mask."""
        return self.add(
            TokenReweight(
                tuple(self.blocks(block)),
                "cross",
                window_of(sigma_start, sigma_end, steps),
                rows,
                positions=tuple(self.positions(phrase, prompt)),
                scale=scale,
                mode=mode,
                mask=None if mask is None else as_mask(mask),
            )
        )

    def mask_tokens(
        self, phrase: str, block: Selector = "all", **kwargs
    ) -> TokenReweight:
        """Remove phrase's influence (attention probability 0) and keep the rest of the prompt."""
        if "mode" in kwargs and kwargs["mode"] != "prob":
            raise ValueError("mode: masking works with mode='prob' only")
        return self.reweight(phrase, 0.0, block, **kwargs)

    def keep_only(
        self,
        phrases: Union[str, Sequence[str]],
        block: Selector = "all",
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        *,
        prompt: Optional[str] = None,
        keep_bos: bool = True,
        mask=None,
        steps: Optional[Tuple[Optional[int], Optional[int]]] = None,
        rows: str = "cond",
    ) -> TokenReweight:
        """Attend only to these phrases' tokens (and BOS unless keep_bos=False)."""
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        positions = sorted({p for ph in phrases for p in self.positions(ph, prompt)})
        return self.add(
            TokenReweight(
                tuple(self.blocks(block)),
                "cross",
                window_of(sigma_start, sigma_end, steps),
                rows,
                positions=tuple(positions),
                scale=1.0,
                mask=None if mask is None else as_mask(mask),
                keep_only=True,
                keep_bos=keep_bos,
            )
        )

    def regional(
        self,
        prompt: str,
        mask,
        weight: float = 1.0,
        block: Selector = "all",
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        **kwargs,
    ) -> RegionalInjection:
        """Inject prompt inside mask only (a 2-D array in [0, 1] or a name like 'left')."""
        return self.regions(
            [(prompt, mask, weight)], block, sigma_start, sigma_end, **kwargs
        )

    def regions(
        self,
        regions: Sequence[Tuple],
        block: Selector = "all",
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        *,
        steps: Optional[Tuple[Optional[int], Optional[int]]] = None,
        rows: str = "cond",
    ) -> RegionalInjection:
        """Several (prompt, mask[, weight]) regions in one pass."""
        built = []
        for i, item in enumerate(regions):
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ValueError(
                    f"regions[{i}]: expected (prompt, mask) or (prompt, mask, weight)"
                )
            prompt, mask = item[0], item[1]
            weight = item[2] if len(item) == 3 else 1.0
            built.append(Region(prompt, self.embedding(prompt), as_mask(mask), weight))
        return self.add(
            RegionalInjection(
                tuple(self.blocks(block)),
                "cross",
                window_of(sigma_start, sigma_end, steps),
                rows,
                regions=tuple(built),
            )
        )

    def self_attention(
        self,
        query_region,
        key_region,
        scale: float,
        block: Selector = "all",
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        *,
        symmetric: bool = False,
        steps: Optional[Tuple[Optional[int], Optional[int]]] = None,
        rows: str = "cond",
    ) -> SelfAttentionControl:
        """Scale self-attention from query_region to key_region (>1 enhance, <1 suppress)."""
        return self.add(
            SelfAttentionControl(
                tuple(self.blocks(block)),
                "self",
                window_of(sigma_start, sigma_end, steps),
                rows,
                query_mask=as_mask(query_region),
                key_mask=as_mask(key_region),
                scale=scale,
                symmetric=symmetric,
            )
        )

    def enhance_interaction(self, region_a, region_b, scale: float = 2.0, **kwargs):
        """Make the two regions attend to each other more (symmetric, scale > 1)."""
        if scale <= 1:
            raise ValueError(f"scale: expected > 1 to enhance, got {scale!r}")
        return self.self_attention(region_a, region_b, scale, symmetric=True, **kwargs)

    def suppress_interaction(self, region_a, region_b, scale: float = 0.5, **kwargs):
        """Make the two regions attend to each other less (symmetric, scale < 1)."""
        if not 0 <= scale < 1:
            raise ValueError(
                f"scale: expected 0 <= scale < 1 to suppress, got {scale!r}"
            )
        return self.self_attention(region_a, region_b, scale, symmetric=True, **kwargs)


def _delegate(processor) -> Link:
    """A chain end that hands the call to a processor registered before this Pulse."""

    def link(call: Call, next: Next) -> mx.array:
        if call.transforms or call.observers:
            raise PulseError(
                f"{call.meta.block_id}: a probabilities transform cannot pass through the "
                f"foreign processor {processor!r} registered before this Pulse"
            )
        return processor(call.attn, call.x, call.memory, call.mask, call.meta)

    return link
