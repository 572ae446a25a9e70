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
composes: the inner Pulse's links run first, then the outer's. Pulses may exit
in any order: one that exits while a later one is still active takes only its
own links and observers away, and the last to exit restores the state found
before the first entered.

A generator from ``pipe.generate_latents`` created inside ``with`` belongs to
that block: advancing it after the block has exited raises ``PulseError``
(it would run without the techniques).

Techniques that need the prompt's tokens (re-weighting, masking) take
``prompt=`` or use the one given to ``Pulse(pipe, prompt=...)``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import warnings
import weakref
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import mlx.core as mx

from . import patchset, tokens
from .chain import Call, Link, Next, SiteChain
from .masks import as_mask
from .prompt_weights import WeightedPrompt, parse
from .schedule import PlannedStep, miss_message, planned_schedule
from .selectors import Selector, describe, resolve
from .techniques.base import Technique, window_of
from .techniques.embedding_weights import EmbeddingWeights
from .techniques.injection import Injection, encode_prompt
from .techniques.perturbed_attention import PerturbedAttention, Scale
from .techniques.prompt_to_prompt import PromptToPrompt, SelfAttentionEdit
from .techniques.regional import Region, RegionalInjection
from .techniques.reweight import TokenReweight
from .techniques.self_attention import SelfAttentionControl
from .tokens import find_phrase_pipeline, span_positions_pipeline, token_ids

WEIGHT_MODES = ("attention", "embedding")
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


# The active Pulses of each hooks object, in entry order.
_ACTIVE: "weakref.WeakKeyDictionary[object, List[Pulse]]" = weakref.WeakKeyDictionary()
GENERATORS = ("generate_latents", "generate_latents_from_image")


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
        self.observers: List = [self._observe]
        self._embeddings: Dict[str, mx.array] = {}
        self._saved = None
        self._entry = None
        self._installed: Dict[Key, SiteChain] = {}
        self._entered: List[Technique] = []
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
        stack = _ACTIVE.setdefault(self.hooks, [])
        self.visited = []
        try:
            self._activate()
        except BaseException:
            self._restore()
            raise
        if not stack:
            _guard_generators(self.pipe, stack)
        self._entry = object()
        stack.append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.active:
            raise PulseError("this Pulse is not active: nothing to exit")
        stack = _ACTIVE.get(self.hooks, [])
        later = stack[stack.index(self) + 1 :] if self in stack else []
        for pulse in reversed(later):
            pulse._restore()
        self._restore()
        self._entry = None
        if self in stack:
            stack.remove(self)
        for pulse in later:  # exited out of order: the later Pulses stay active
            pulse._activate()
        if not stack:
            _unguard_generators(self.pipe)
        if exc_type is None:
            self._warn_missed(self.visited, "this generation")
        return False

    def _activate(self) -> None:
        """Save the hooks' state, then install this Pulse's observers and chains."""
        h = self.hooks
        self._saved = (h.enabled, dict(h.processors), list(h.observers), h.step)
        h.observers.extend(self.observers)
        for key in self.links:
            self._install(key)
        for t in self.techniques:
            self._entered.append(t)
            t.enter(self.pipe)
        h.enabled = True

    def _restore(self) -> None:
        enabled, processors, observers, step = self._saved
        while self._entered:
            self._entered.pop().exit(self.pipe)
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

    def add_observer(self, observer) -> None:
        """Call observer(step) before every denoising step while this Pulse is active."""
        self.observers.append(observer)
        if self.active:
            self.hooks.observers.append(observer)

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
        if self.active:
            self._entered.append(technique)
            technique.enter(self.pipe)
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
            while self._entered:
                self._entered.pop().exit(self.pipe)
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
        tokens.check_prompt(self.pipe, prompt)
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

    def prompt_weights(
        self,
        prompt: Union[str, WeightedPrompt],
        syntax: str = "a1111",
        mode: str = "attention",
        block: Selector = "all",
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        *,
        steps: Optional[Tuple[Optional[int], Optional[int]]] = None,
        rows: str = "cond",
    ) -> List[Technique]:
        """Weights written in the prompt (A1111's or compel's syntax), on attention or embeddings.

        Generate with ``parse(prompt, syntax).text``, the prompt without the marks.
        ``mode="attention"`` scales each weighted phrase's attention probabilities
        (as ``reweight``); ``mode="embedding"`` scales its token embeddings and
        restores their mean, as A1111 does.
        """
        weighted = (
            prompt if isinstance(prompt, WeightedPrompt) else parse(prompt, syntax)
        )
        if mode not in WEIGHT_MODES:
            raise ValueError(f"mode: expected one of {WEIGHT_MODES}, got {mode!r}")
        text = weighted.text
        if self.prompt is not None and self.prompt != text:
            raise PulseError(
                f"prompt: Pulse was given {self.prompt!r}, the weighted prompt's text is"
                f" {text!r}; generate with (and give Pulse) the text without the marks"
            )
        spans = weighted.spans()
        found = [
            (span_positions_pipeline(self.pipe, text, s.start, s.end), s) for s in spans
        ]
        window = window_of(sigma_start, sigma_end, steps)
        blocks = tuple(self.blocks(block))
        if mode == "embedding":
            weights = tuple((p, s.weight) for ps, s in found for p in ps)
            if not weights:
                return []
            return [self.add(EmbeddingWeights(blocks, "cross", window, rows, weights))]
        for _, span in found:
            if span.weight < 0:
                raise ValueError(
                    f"weight of {span.phrase!r}: {span.weight} < 0 cannot scale attention"
                    " probabilities; use mode='embedding' (A1111's behaviour)"
                )
        return [
            self.add(
                TokenReweight(
                    blocks, "cross", window, rows, positions=tuple(ps), scale=s.weight
                )
            )
            for ps, s in found
        ]

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

    def prompt_to_prompt(
        self,
        source: str,
        edit: str,
        mode: str = "replace",
        block: Selector = "all",
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        *,
        steps: Optional[Tuple[Optional[int], Optional[int]]] = None,
        reweight: Optional[Dict[str, float]] = None,
        self_window: Optional[Tuple[Optional[float], Optional[float]]] = None,
        self_block: Selector = "all",
        local_blend: Optional[Sequence[str]] = None,
        blend_window: Tuple[Optional[float], Optional[float]] = (None, None),
        blend_block: Selector = "all",
        threshold: float = 0.3,
    ) -> PromptToPrompt:
        """Edit ``source`` into ``edit`` keeping its layout (generate both with n_images=2).

        The cross-attention window is (sigma_start, sigma_end) or ``steps``;
        ``self_window`` (sigmas) also gives the edit the source's self-attention maps;
        ``reweight`` scales words' maps (mode 'reweight'); ``local_blend`` keeps the
        image outside those words' attention the source's, in ``blend_window``.
        """
        for name, text in (("source", source), ("edit", edit)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{name}: expected a non-empty prompt, got {text!r}")
        scales = {}
        for word, scale in (reweight or {}).items():
            for position in find_phrase_pipeline(self.pipe, edit, word):
                scales[position] = scale
        blend = ((), ())
        if local_blend:
            blend = tuple(self._words_in(text, local_blend) for text in (source, edit))
            missing = [
                w
                for w in local_blend
                if not any(self._words_in(t, [w]) for t in (source, edit))
            ]
            if missing:
                raise ValueError(f"local_blend: {missing} are in neither prompt")
        edit_blocks = set(self.blocks(block))
        blend_blocks = set(self.blocks(blend_block)) if local_blend else set()
        technique = PromptToPrompt(
            tuple(b for b in self.hooks.sites if b in edit_blocks | blend_blocks),
            "cross",
            window_of(sigma_start, sigma_end, steps),
            "cond",
            source=source,
            edit=edit,
            mode=mode,
            source_ids=tuple(token_ids(self.pipe, source)),
            edit_ids=tuple(token_ids(self.pipe, edit)),
            scales=scales,
            blend_positions=blend,
            blend_window=window_of(*blend_window, None) if local_blend else None,
            edit_blocks=tuple(sorted(edit_blocks)),
            blend_blocks=tuple(sorted(blend_blocks)),
            threshold=threshold,
        )
        self.add(technique)
        if self_window is not None:
            self.add(
                SelfAttentionEdit(
                    tuple(self.blocks(self_block)),
                    "self",
                    window_of(*self_window, None),
                )
            )
        self.prompt = source
        return technique

    def _words_in(self, prompt: str, words: Sequence[str]) -> Tuple[int, ...]:
        found = set()
        for word in words:
            try:
                found.update(find_phrase_pipeline(self.pipe, prompt, word))
            except ValueError:
                pass
        return tuple(sorted(found))

    def perturbed_attention(
        self,
        scale: Scale = 3.0,
        block: Selector = "mid",
        sigma_start: Optional[float] = None,
        sigma_end: Optional[float] = None,
        *,
        steps: Optional[Tuple[Optional[int], Optional[int]]] = None,
    ) -> PerturbedAttention:
        """Perturbed-attention guidance: s (a number, or a function of sigma) away from identity self-attention."""
        return self.add(
            PerturbedAttention(
                tuple(self.blocks(block)),
                "self",
                window_of(sigma_start, sigma_end, steps),
                "all",
                scale=scale,
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


def active_techniques(pipe) -> List[str]:
    """What acts on pipe at the hooks' current step: techniques, other links, LoRAs."""
    out: List[str] = []
    hooks = getattr(pipe.unet, "hooks", None)
    if hooks is not None and hooks.enabled:
        step = hooks.step
        sites: Dict[str, List[str]] = {}
        for (block_id, _), chain in hooks.processors.items():
            for name, link in getattr(chain, "links", [("processor", chain)]):
                technique = getattr(link, "__self__", None)
                if isinstance(technique, Technique) and step is not None:
                    if not technique.window.contains(step.step_idx, step.sigma):
                        continue
                sites.setdefault(name, []).append(block_id)
        out += [f"{name} on {sorted(set(b))}" for name, b in sites.items()]
    from .lora.adapters import active

    out += [f"LoRA {name} weight {w:g}" for name, w in active(pipe).items()]
    return out


def _guard_generators(pipe, stack: List[Pulse]) -> None:
    """Make pipe's latent generators refuse to run once the Pulses they began under exit."""
    for name in GENERATORS:
        original = getattr(pipe, name, None)
        if original is None or name in vars(pipe):
            continue
        setattr(pipe, name, _guarded(original, stack))


def _unguard_generators(pipe) -> None:
    for name in GENERATORS:
        if getattr(vars(pipe).get(name), "pulse_guard", False):
            delattr(pipe, name)


def _guarded(original, stack: List[Pulse]):
    @functools.wraps(original)
    def generator(*args, **kwargs):
        under = [(pulse, pulse._entry) for pulse in stack]
        return _checked(original.__name__, original(*args, **kwargs), under)

    generator.pulse_guard = True
    return generator


def _checked(name: str, steps, under: List[Tuple[Pulse, object]]):
    """steps, refusing to advance once a Pulse of under has exited since."""
    for i in itertools.count():
        gone = [p for p, entry in under if p._entry is not entry]
        if gone:
            raise PulseError(
                f"{name}: this generator was created inside `with "
                f"Pulse(...)` and is being advanced (step {i}) after that block "
                "exited, so it would run without the techniques; consume it "
                "inside the block"
            )
        try:
            x = next(steps)
        except StopIteration:
            return
        yield x


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
