"""Measure whether the toy model draws what its captions say.

A deterministic classifier reads a decoded image: pixels that differ from the
background by more than a threshold form the drawn object; its colour is the
palette colour nearest to their mean RGB, its position is their centroid.
The quality bar (issue 6): on held-out captions, colour right in >= 90% of
samples and position (centroid in the caption's half; the centre within the
middle third) right in >= 80%.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import shapes

THRESHOLD = 0.25
MIN_PIXELS = 6
COLOUR_BAR = 0.90
POSITION_BAR = 0.80


@dataclass
class Detection:
    colour: Optional[str]
    centroid: Optional[Tuple[float, float]]  # (x, y) in pixels, y downwards
    pixels: int


def foreground(image: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    diff = np.abs(image - np.asarray(shapes.BACKGROUND, np.float32)).max(axis=-1)
    return diff > threshold


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(shapes.COLOURS)
    palette = np.array([shapes.COLOURS[n] for n in names], np.float32)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


def classify(image: np.ndarray, region: Optional[np.ndarray] = None) -> Detection:
    """Colour and centroid of the drawn pixels of an (H, W, 3) image in [0, 1]."""
    image = np.asarray(image, np.float32)
    mask = foreground(image)
    if region is not None:
        mask &= region
    n = int(mask.sum())
    if n < MIN_PIXELS:
        return Detection(None, None, n)
    ys, xs = np.nonzero(mask)
    centroid = (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
    return Detection(nearest_colour(image[mask].mean(axis=0)), centroid, n)


def position_ok(position: str, centroid, size: int) -> bool:
    if centroid is None:
        return False
    x, y = centroid
    half = size / 2
    if position == "left":
        return x < half
    if position == "right":
        return x > half
    if position == "top":
        return y < half
    if position == "bottom":
        return y > half
    if position == "centre":
        return abs(x - half) < size / 6 and abs(y - half) < size / 6
    raise ValueError(position)


def half_region(position: str, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    return {
        "left": xs < size / 2,
        "right": xs > size / 2,
        "top": ys < size / 2,
        "bottom": ys > size / 2,
    }[position]


@dataclass
class Result:
    samples: int = 0
    colour_ok: int = 0
    position_ok: int = 0
    per_caption: Dict[str, Tuple[int, int, int]] = field(default_factory=dict)

    @property
    def colour_rate(self) -> float:
        return self.colour_ok / max(1, self.samples)

    @property
    def position_rate(self) -> float:
        return self.position_ok / max(1, self.samples)

    @property
    def passed(self) -> bool:
        return self.colour_rate >= COLOUR_BAR and self.position_rate >= POSITION_BAR

    def summary(self) -> str:
        return (
            f"colour {self.colour_ok}/{self.samples} = {100 * self.colour_rate:.1f}% "
            f"(bar {100 * COLOUR_BAR:.0f}%), position {self.position_ok}/{self.samples}"
            f" = {100 * self.position_rate:.1f}% (bar {100 * POSITION_BAR:.0f}%)"
        )


def generate(
    pipe,
    text: str,
    n: int,
    seed: int,
    num_steps: int = 20,
    cfg_weight: float = 5.0,
    latent_size: Tuple[int, int] = (8, 8),
) -> np.ndarray:
    """n decoded images (n, H, W, 3) in [0, 1] from upstream's own sampling loop."""
    from ..sampling import decode, final_latents

    x = final_latents(
        pipe,
        text,
        n_images=n,
        num_steps=num_steps,
        cfg_weight=cfg_weight,
        latent_size=latent_size,
        seed=seed,
    )
    return decode(pipe, x)


def measure(
    pipe,
    objects: Sequence[shapes.Obj] = None,
    per_caption: int = 8,
    seed: int = 0,
    **generate_kw,
) -> Result:
    """Colour and position accuracy of single-object captions (default: held-out)."""
    objects = list(objects) if objects is not None else shapes.held_out_singles()
    result = Result()
    for i, obj in enumerate(objects):
        text = shapes.caption([obj])
        images = generate(pipe, text, per_caption, seed + 1000 * i, **generate_kw)
        size = images.shape[1]
        c_ok = p_ok = 0
        for image in images:
            det = classify(image)
            c_ok += det.colour == obj.colour
            p_ok += position_ok(obj.position, det.centroid, size)
        result.samples += len(images)
        result.colour_ok += c_ok
        result.position_ok += p_ok
        result.per_caption[text] = (len(images), c_ok, p_ok)
    return result


def two_object_scenes() -> List[List[shapes.Obj]]:
    """Two-object captions built from held-out triples, one per position pair."""
    held = shapes.held_out_singles()
    scenes = []
    for a, b in shapes.PAIRS:
        first = next(o for o in held if o.position == a)
        second = next(o for o in held if o.colour != first.colour and o.position == b)
        scenes.append([first, second])
    return scenes


def measure_two_objects(
    pipe, per_caption: int = 4, seed: int = 0, **generate_kw
) -> Result:
    """Each object's colour in its half ("colour") and both right ("position")."""
    result = Result()
    for i, scene in enumerate(two_object_scenes()):
        text = shapes.caption(scene)
        images = generate(pipe, text, per_caption, seed + 1000 * i, **generate_kw)
        size = images.shape[1]
        c_ok = both = 0
        for image in images:
            hits = [
                classify(image, half_region(o.position, size)).colour == o.colour
                for o in scene
            ]
            c_ok += sum(hits)
            both += all(hits)
        result.samples += len(images)
        result.colour_ok += c_ok / 2
        result.position_ok += both
        result.per_caption[text] = (len(images), c_ok, both)
    return result
