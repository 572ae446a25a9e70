"""What prompt-to-prompt editing does to the toy model's images, as numbers.

Each experiment generates, per seed, the source prompt alone, the edited prompt
alone (a plain regeneration with the same seed) and the prompt-to-prompt pair
(source and edit in one batch), and measures how much of the source's layout
the edit keeps (the intersection over union of the drawn pixels) and whether
the edited attribute changed (colour scores, see ``effects``).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from . import effects, quality, shapes

SOURCE = "a red circle"  # no position word: the layout comes from the seed
EDIT = "a blue circle"
TWO = "a red circle on the left and a yellow square on the right"
TWO_EDIT = "a blue circle on the left and a yellow square on the right"
SELF_WINDOW = (None, None)  # the edit also takes the source's self-attention
BLEND_THRESHOLD = 0.6  # on the toy's 8x8 latent, 0.3 (the paper's) selects every pixel


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two images' drawn (foreground) pixels."""
    fa, fb = quality.foreground(a), quality.foreground(b)
    union = (fa | fb).sum()
    return float((fa & fb).sum() / union) if union else 1.0


def _images(pipe, prompt: str, seed: int, n: int, configure=None) -> np.ndarray:
    setup = effects.with_pulse(pipe, prompt, configure) if configure else None
    return effects.generate(pipe, prompt, n, seed, setup=setup)


def pair(
    pipe, source: str, edit: str, seed: int, **kw
) -> Tuple[np.ndarray, np.ndarray]:
    """(source image, edited image) of one prompt-to-prompt call."""
    return pair_and_mask(pipe, source, edit, seed, **kw)[:2]


def pair_and_mask(pipe, source: str, edit: str, seed: int, **kw):
    """(source image, edited image, local blend's last mask or None) of one call."""
    made = []

    def configure(p):
        made.append(p.prompt_to_prompt(source, edit, **kw))

    images = _images(pipe, source, seed, 2, configure)
    mask = made[0].last_mask
    return images[0], images[1], None if mask is None else np.array(mask)


def layout_kept(pipe, seeds: Sequence[int]) -> Dict[str, np.ndarray]:
    """Per seed: IoU with the source of the plain regeneration and of the edit; colours."""
    out: Dict[str, list] = {k: [] for k in ("plain", "edit", "blue", "source_blue")}
    for seed in seeds:
        source = _images(pipe, SOURCE, seed, 1)[0]
        plain = _images(pipe, EDIT, seed, 1)[0]
        src, edited = pair(pipe, SOURCE, EDIT, seed, self_window=SELF_WINDOW)
        out["plain"].append(iou(source, plain))
        out["edit"].append(iou(src, edited))
        out["blue"].append(effects.blueness(edited[None])[0])
        out["source_blue"].append(effects.blueness(src[None])[0])
    return {k: np.array(v) for k, v in out.items()}


def local_blend(pipe, seeds: Sequence[int]) -> Dict[str, np.ndarray]:
    """Per seed, two objects, the left one recoloured, with and without local blend.

    ``blend`` and ``plain``: the right half's mean absolute change from the source
    with local blend on "circle" and without; ``gain``: the left half's blueness
    minus the source's, with the blend; ``cover``: the share of the latent the last
    step's blend mask keeps from the edit.
    """
    right = quality.half_region("right", shapes.SIZE)
    left = quality.half_region("left", shapes.SIZE)
    out: Dict[str, list] = {k: [] for k in ("blend", "plain", "gain", "cover")}
    for seed in seeds:
        src, blended, mask = pair_and_mask(
            pipe, TWO, TWO_EDIT, seed, local_blend=["circle"], threshold=BLEND_THRESHOLD
        )
        src2, edited = pair(pipe, TWO, TWO_EDIT, seed)
        out["blend"].append(float(np.abs(blended - src)[right].mean()))
        out["plain"].append(float(np.abs(edited - src2)[right].mean()))
        blue = effects.blueness(np.stack([blended, src]), left)
        out["gain"].append(float(blue[0] - blue[1]))
        out["cover"].append(float(mask.mean()))
    return {k: np.array(v) for k, v in out.items()}


def pag_accuracy(pipe, scale: float, cfg: float = 1.0, seed: int = 0, n: int = 4):
    """(colour accuracy, images) over the held-out captions, PAG at ``scale`` (0: off).

    Caption i is sampled n times with seed ``seed + i``.
    """
    hits, batches = [], []
    for i, obj in enumerate(shapes.held_out_singles()):
        caption = shapes.caption([obj])
        setup = None
        if scale:
            setup = effects.with_pulse(
                pipe, caption, lambda p: p.perturbed_attention(scale)
            )
        images = effects.generate(pipe, caption, n, seed=seed + i, cfg=cfg, setup=setup)
        hits += [quality.classify(im).colour == obj.colour for im in images]
        batches.append(images)
    return float(np.mean(hits)), np.concatenate(batches)


def _blueness(image: np.ndarray) -> float:
    return float(effects.blueness(image[None])[0])


def _x(image: np.ndarray) -> float:
    return effects.centroid(image)[0]


# The demo's prompt-weighting, prompt-to-prompt and PAG panels (pulse_plugin.demo), as
# numbers: name -> (panel, function of its pictures). tests/test_demo.py asserts them.
PANEL_STATISTICS: Dict[str, Tuple[str, Callable[[Sequence[np.ndarray]], float]]] = {
    "weights: embedding - baseline blueness": (
        "prompt-weights",
        lambda t: _blueness(t[2]) - _blueness(t[0]),
    ),
    "weights: attention - embedding blueness": (
        "prompt-weights",
        lambda t: _blueness(t[1]) - _blueness(t[2]),
    ),
    "p2p: edit - plain IoU with the source": (
        "prompt-to-prompt",
        lambda t: iou(t[0], t[2]) - iou(t[0], t[1]),
    ),
    "p2p: plain's x shift": ("prompt-to-prompt", lambda t: _x(t[1]) - _x(t[0])),
    "p2p: edit's x shift, abs": (
        "prompt-to-prompt",
        lambda t: abs(_x(t[2]) - _x(t[0])),
    ),
    "p2p: largest blob's fill gain": (
        "prompt-to-prompt",
        lambda t: effects.fill_ratio(t[2], True) - effects.fill_ratio(t[0], True),
    ),
    "pag: mean change (0-255)": (
        "pag",
        lambda t: float(np.abs(t[1] - t[0]).mean() * 255),
    ),
    "pag: x shift, abs": ("pag", lambda t: abs(_x(t[1]) - _x(t[0]))),
}


def panel_statistic(name: str, pictures: Sequence[np.ndarray]) -> float:
    return PANEL_STATISTICS[name][1](pictures)
