"""Prompt-to-prompt editing (Hertz et al., 2022): a source and an edited prompt in one batch.

Both images start from the same noise (and, with an ancestral sampler, get the same
noise at every step). Inside the cross-attention window the edit's conditional row
takes the source's attention probabilities for the tokens the two prompts share:

- ``replace``: a word swapped, same token count: every token takes the source's map;
- ``refine``: words added or removed: tokens aligned with the source's take its maps,
  new tokens keep their own;
- ``reweight``: as refine, then chosen tokens' maps are scaled (not renormalised).

Inside the self-attention window the edit's self-attention maps are the source's.
Local blend keeps the image outside the chosen words' attention the source's: after
every step in its window, ``x_edit = x_source + m * (x_edit - x_source)``, with ``m``
the thresholded, dilated union of the words' cross-attention maps in both rows.

The plugin does this through upstream's own loop: while the Pulse is active the
pipeline's ``_get_text_conditioning`` encodes [source, edit] (and the negative prompt
twice), its sampler draws one noise for both rows, and with local blend its
``_denoising_step`` blends after upstream's step. Generate with
``pipe.generate_latents(edit.source, n_images=2, ...)``; row 0 is the source, row 1
the edit.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..chain import Call, Next
from ..schedule import Window
from .base import Technique

MODES = ("replace", "refine", "reweight")


# ------------------------------------------------------------------ pure maths
def token_mapping(source: Sequence[int], edit: Sequence[int], mode: str) -> np.ndarray:
    """For each edit token position, the source position whose map it takes (-1: its own)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "replace":
        if len(source) != len(edit):
            raise ValueError(
                f"replace needs prompts of the same token count ({len(source)} and"
                f" {len(edit)} tokens); use mode='refine' for added or removed words"
            )
        return np.arange(len(edit))
    out = np.full(len(edit), -1)
    matcher = difflib.SequenceMatcher(None, list(source), list(edit), autojunk=False)
    for block in matcher.get_matching_blocks():
        out[block.b : block.b + block.size] = np.arange(block.a, block.a + block.size)
    return out


def edited_probs(
    source: mx.array, edit: mx.array, mapping: np.ndarray, scales: Optional[np.ndarray]
) -> mx.array:
    """The edit row's cross-attention: mapped source maps, own maps where unmapped."""
    taken = mx.take(source, mx.array(np.maximum(mapping, 0)), axis=-1)
    out = mx.where(mx.array(mapping >= 0), taken, edit)
    return out if scales is None else out * mx.array(scales.astype(np.float32))


def blend_mask(maps: mx.array, threshold: float) -> mx.array:
    """(2, H, W) word maps of source and edit -> (H, W, 1) union of their dilated, thresholded maps."""
    padded = mx.pad(maps, [(0, 0), (1, 1), (1, 1)], constant_values=-np.inf)
    h, w = maps.shape[1:]
    pooled = padded[:, 0:h, 0:w]
    for dy in range(3):
        for dx in range(3):
            pooled = mx.maximum(pooled, padded[:, dy : dy + h, dx : dx + w])
    top = pooled.max(axis=(1, 2), keepdims=True)
    above = pooled > threshold * top
    return mx.maximum(above[0], above[1]).astype(maps.dtype)[..., None]


def upsample(maps: mx.array, shape: Tuple[int, int]) -> mx.array:
    """(R, h, w) -> (R, H, W) nearest-neighbour, H and W multiples of h and w."""
    r, h, w = maps.shape
    fy, fx = shape[0] // h, shape[1] // w
    if (fy * h, fx * w) != tuple(shape):
        raise ValueError(f"local blend: a {h}x{w} map does not tile the {shape} latent")
    grown = mx.broadcast_to(maps[:, :, None, :, None], (r, h, fy, w, fx))
    return grown.reshape(r, h * fy, w * fx)


# ------------------------------------------------------------------ the technique
@dataclass
class PromptToPrompt(Technique):
    """Cross-attention control between a source row and an edit row (kind 'cross')."""

    source: str = ""
    edit: str = ""
    mode: str = "replace"
    source_ids: Tuple[int, ...] = ()
    edit_ids: Tuple[int, ...] = ()
    scales: Dict[int, float] = field(default_factory=dict)  # edit position -> scale
    blend_positions: Tuple[Tuple[int, ...], Tuple[int, ...]] = ((), ())
    blend_window: Optional[Window] = None
    edit_blocks: Tuple[str, ...] = ()
    blend_blocks: Tuple[str, ...] = ()
    threshold: float = 0.3

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "cross":
            raise ValueError(
                "kind: prompt-to-prompt's main part acts on cross-attention"
            )
        token_mapping(self.source_ids, self.edit_ids, self.mode)  # refuses early
        if self.scales and self.mode != "reweight":
            raise ValueError("scales: token scales need mode='reweight'")
        if self.mode == "reweight" and not self.scales:
            raise ValueError(
                "mode 'reweight': give the words to scale and their scales"
            )
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold: expected in (0, 1), got {self.threshold!r}")
        self._saved: Dict[str, object] = {}
        self._maps: List[mx.array] = []
        self.last_mask: Optional[mx.array] = None  # (H, W, 1) of the last blended step
        self._mappings: Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]] = {}

    # rows: the conditional half is [source, edit]
    @staticmethod
    def pair_rows(call: Call) -> Tuple[int, int]:
        start = call.meta.cond_rows.start
        if call.meta.cond_rows.stop - start != 2:
            raise ValueError(
                "prompt-to-prompt generates one source and one edit: call"
                " generate_latents(edit.source, n_images=2, ...)"
            )
        return start, start + 1

    def _mapping(self, n: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The mapping and scales over the n padded tokens both rows hold."""
        if n not in self._mappings:
            pad = lambda ids: list(ids) + [0] * (n - len(ids))  # noqa: E731
            mapping = token_mapping(pad(self.source_ids), pad(self.edit_ids), self.mode)
            scales = None
            if self.scales:
                scales = np.ones(n, np.float32)
                for position, scale in self.scales.items():
                    scales[position] = scale
            self._mappings[n] = (mapping, scales)
        return self._mappings[n]

    def _transform(self, probs: mx.array, call: Call) -> mx.array:
        s, e = self.pair_rows(call)
        mapping, scales = self._mapping(probs.shape[-1])
        edited = edited_probs(probs[s], probs[e], mapping, scales)
        return mx.concatenate([probs[:e], edited[None], probs[e + 1 :]], axis=0)

    def _observe(self, probs: mx.array, call: Call) -> None:
        rows = []
        for row, positions in zip(self.pair_rows(call), self.blend_positions):
            if positions:
                word = probs[row][..., list(positions)].sum(axis=-1).mean(axis=0)
            else:
                word = mx.zeros(probs.shape[2], probs.dtype)
            rows.append(word)
        self._maps.append(mx.stack(rows).reshape(2, *call.meta.spatial_shape))

    def link(self, call: Call, next: Next) -> mx.array:
        meta = call.meta
        if call.branch != "base" or call.guidance_pass != "main":
            return next(call)
        transforms, observers = call.transforms, call.observers
        editing = meta.block_id in self.edit_blocks
        if editing and self.window.contains(meta.step_idx, meta.sigma):
            transforms = transforms + (self._transform,)
        blending = self.blend_window is not None and meta.block_id in self.blend_blocks
        if blending and self.blend_window.contains(meta.step_idx, meta.sigma):
            observers = observers + (self._observe,)
        if transforms is call.transforms and observers is call.observers:
            return next(call)
        return next(call.with_(transforms=transforms, observers=observers))

    # ------------------------------------------------ the pipeline's overrides
    def enter(self, pipe) -> None:
        names = ["_get_text_conditioning"]
        if self.blend_window is not None:
            names.append("_denoising_step")
        taken = [n for n in names if n in vars(pipe)]
        if taken or isinstance(pipe.sampler, PairedSampler):
            raise ValueError(
                "another technique already replaces the pipeline's "
                f"{taken or ['sampler']}: prompt-to-prompt cannot run beside it"
            )
        original = pipe._get_text_conditioning
        self._saved = {"sampler": pipe.sampler}

        def conditioning(text, n_images=1, cfg_weight=7.5, negative_text=""):
            if text != self.source or n_images != 2:
                raise ValueError(
                    "prompt-to-prompt: generate with generate_latents(edit.source,"
                    f" n_images=2, ...), not ({text!r}, n_images={n_images})"
                )
            return self._encode(pipe, original, cfg_weight, negative_text)

        pipe._get_text_conditioning = conditioning
        pipe.sampler = PairedSampler(pipe.sampler)
        if self.blend_window is not None:
            step = pipe._denoising_step
            pipe._denoising_step = lambda *a, **k: self._blend(step(*a, **k))

    def exit(self, pipe) -> None:
        if not self._saved:
            return
        vars(pipe).pop("_get_text_conditioning", None)
        vars(pipe).pop("_denoising_step", None)
        pipe.sampler = self._saved["sampler"]
        self._saved = {}

    def _encode(self, pipe, original, cfg_weight, negative_text):
        """Upstream's conditioning of [source, edit] (+ the negative twice), one padding."""
        saved = vars(pipe).get("_tokenize")
        texts = [self.source, self.edit]

        def tokenize(tokenizer, text, negative=None):
            rows = [tokenizer.tokenize(t) for t in texts]
            if negative is not None:
                rows += [tokenizer.tokenize(negative)] * 2
            n = max(len(r) for r in rows)
            return mx.array([r + [0] * (n - len(r)) for r in rows])

        pipe._tokenize = tokenize
        try:
            return original(self.source, 1, cfg_weight, negative_text)
        finally:
            if saved is None:
                vars(pipe).pop("_tokenize", None)
            else:
                pipe._tokenize = saved

    def _blend(self, x: mx.array) -> mx.array:
        maps, self._maps = self._maps, []
        if not maps:
            return x
        total = sum(upsample(m, x.shape[1:3]) for m in maps)
        mask = blend_mask(total, self.threshold)
        self.last_mask = mask
        return mx.concatenate([x[:1], (x[:1] + mask * (x[1:] - x[:1]))], axis=0)


@dataclass
class SelfAttentionEdit(Technique):
    """Inside its window, the edit row's self-attention maps are the source's."""

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "self":
            raise ValueError(
                "kind: this part of prompt-to-prompt acts on self-attention"
            )

    def _transform(self, probs: mx.array, call: Call) -> mx.array:
        s, e = PromptToPrompt.pair_rows(call)
        return mx.concatenate([probs[:e], probs[s : s + 1], probs[e + 1 :]], axis=0)

    def link(self, call: Call, next: Next) -> mx.array:
        if not self.active(call) or call.guidance_pass != "main":
            return next(call)
        return next(call.with_(transforms=call.transforms + (self._transform,)))


class PairedSampler:
    """Upstream's sampler with one noise for a [source, edit] pair of rows."""

    def __init__(self, base):
        self.base = base

    def __getattr__(self, name):
        return getattr(self.base, name)

    def sample_prior(self, shape, dtype=mx.float32, key=None):
        one = self.base.sample_prior((1, *shape[1:]), dtype=dtype, key=key)
        return mx.broadcast_to(one, shape)

    def step(self, eps_pred, x_t, t, t_prev):
        """Each row stepped alone, from the same random state (the same noise)."""
        rows = []
        key = global_key()
        for i in range(len(x_t)):
            set_global_key(key)
            rows.append(self.base.step(eps_pred[i : i + 1], x_t[i : i + 1], t, t_prev))
        return mx.concatenate(rows, axis=0)


def global_key() -> Tuple[int, int]:
    """MLX's global PRNG key."""
    hi, lo = mx.random.state[0].tolist()
    return hi, lo


def set_global_key(key: Tuple[int, int]) -> None:
    """Set MLX's global PRNG key (``mx.random.seed(s)`` sets the key [s >> 32, s & 0xffffffff])."""
    mx.random.seed((key[0] << 32) | key[1])
