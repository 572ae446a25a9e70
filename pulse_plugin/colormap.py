"""A perceptual colour map (viridis) as a small table, and a colour bar. Pillow only.

The table is viridis sampled at nine evenly spaced points; values in between
are interpolated linearly in RGB. Dark purple is 0 (least), yellow is 1 (most).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

VIRIDIS = np.array(
    [
        [68, 1, 84],
        [72, 40, 120],
        [62, 73, 137],
        [49, 104, 142],
        [38, 130, 142],
        [31, 158, 137],
        [53, 183, 121],
        [110, 206, 88],
        [253, 231, 37],
    ],
    dtype=np.float32,
)


def colormap(values: np.ndarray, table: np.ndarray = VIRIDIS) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN raises) -> uint8 RGB, shape values.shape + (3,)."""
    values = np.asarray(values, dtype=np.float32)
    if np.isnan(values).any():
        raise ValueError("colormap: values contain NaN")
    x = np.clip(values, 0, 1) * (len(table) - 1)
    i = np.minimum(np.floor(x).astype(int), len(table) - 2)
    f = (x - i)[..., None]
    return np.round((1 - f) * table[i] + f * table[i + 1]).astype(np.uint8)


def colour_bar(
    width: int, labels: Tuple[str, str] = ("low", "high"), height: int = 10
) -> Image.Image:
    """A horizontal bar from 0 (left) to 1 (right) with a label under each end."""
    ramp = colormap(np.linspace(0, 1, max(width - 8, 2))[None, :].repeat(height, 0))
    out = Image.new("RGB", (width, height + 14), "white")
    out.paste(Image.fromarray(ramp), (4, 0))
    draw = ImageDraw.Draw(out)
    draw.text((4, height + 1), labels[0], fill="black")
    right = int(draw.textlength(labels[1]))
    draw.text((width - 4 - right, height + 1), labels[1], fill="black")
    return out


def with_colour_bar(
    img: Image.Image, labels: Tuple[str, str] = ("low", "high")
) -> Image.Image:
    """img with a colour bar under it, as wide as img (at least 96 px)."""
    bar = colour_bar(max(img.width, 96), labels)
    out = Image.new(
        "RGB", (max(img.width, bar.width), img.height + bar.height), "white"
    )
    out.paste(img, (0, 0))
    out.paste(bar, (0, img.height))
    return out
