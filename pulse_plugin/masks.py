"""Region masks (pure numpy, values in [0, 1]) and their area-average resize to a block's (H, W).

Shapes are given in fractions of the image (0..1, x to the right, y down), so
one mask serves every resolution; ``size`` is only the raster they are drawn on.
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np

Size = Tuple[int, int]
DEFAULT_SIZE: Size = (256, 256)
HALVES = ("left", "right", "top", "bottom")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _check_size(size: Size) -> Size:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size: expected (height, width) >= 1, got {size!r}")
    return int(size[0]), int(size[1])


def _grid(size: Size) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in fractions of the image."""
    h, w = _check_size(size)
    y = (np.arange(h, dtype=np.float64) + 0.5) / h
    x = (np.arange(w, dtype=np.float64) + 0.5) / w
    return y[:, None], x[None, :]


def _ramp(distance: np.ndarray, feather: float) -> np.ndarray:
    """1 inside (distance <= 0), 0 outside, a linear edge of width feather centred on the border."""
    if feather < 0:
        raise ValueError(f"feather: expected >= 0, got {feather!r}")
    if feather == 0:
        return (distance <= 0).astype(np.float32)
    return np.clip(0.5 - distance / feather, 0.0, 1.0).astype(np.float32)


def rectangle(
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    size: Size = DEFAULT_SIZE,
    feather: float = 0.0,
) -> np.ndarray:
    """A rectangle [x0, x1] x [y0, y1] (fractions of the image)."""
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(
            f"rectangle: expected 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {(x0, y0, x1, y1)}"
        )
    y, x = _grid(size)
    # Borders on the image edge never fade.
    dx = np.maximum(x0 - x if x0 > 0 else -np.inf, x - x1 if x1 < 1 else -np.inf)
    dy = np.maximum(y0 - y if y0 > 0 else -np.inf, y - y1 if y1 < 1 else -np.inf)
    return _ramp(np.maximum(dx, dy), feather)


def circle(
    cx: float, cy: float, radius: float, size: Size = DEFAULT_SIZE, feather: float = 0.0
) -> np.ndarray:
    """A disc of the given centre and radius (fractions of the image width/height)."""
    if radius <= 0:
        raise ValueError(f"radius: expected > 0, got {radius!r}")
    y, x = _grid(size)
    return _ramp(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - radius, feather)


def half(side: str, size: Size = DEFAULT_SIZE, feather: float = 0.0) -> np.ndarray:
    """The left, right, top or bottom half."""
    boxes = {
        "left": (0, 0, 0.5, 1),
        "right": (0.5, 0, 1, 1),
        "top": (0, 0, 1, 0.5),
        "bottom": (0, 0.5, 1, 1),
    }
    if side not in boxes:
        raise ValueError(f"side: expected one of {HALVES}, got {side!r}")
    return rectangle(*boxes[side], size=size, feather=feather)


def quadrant(which: str, size: Size = DEFAULT_SIZE, feather: float = 0.0) -> np.ndarray:
    """One of the four quadrants, e.g. ``top-left``."""
    if which not in QUADRANTS:
        raise ValueError(f"quadrant: expected one of {QUADRANTS}, got {which!r}")
    v, h = which.split("-")
    x0, x1 = (0, 0.5) if h == "left" else (0.5, 1)
    y0, y1 = (0, 0.5) if v == "top" else (0.5, 1)
    return rectangle(x0, y0, x1, y1, size=size, feather=feather)


def centre_square(
    fraction: float = 0.5, size: Size = DEFAULT_SIZE, feather: float = 0.0
) -> np.ndarray:
    """A centred square covering ``fraction`` of the width and height."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected 0 < fraction <= 1, got {fraction!r}")
    a = (1 - fraction) / 2
    return rectangle(a, a, 1 - a, 1 - a, size=size, feather=feather)


def from_image(image, feather: float = 0.0) -> np.ndarray:
    """A mask from a grayscale image: a path, a PIL image or an array (uint8 0..255 or float 0..1)."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        from PIL import Image

        with Image.open(image) as im:
            image = np.asarray(im.convert("L"))
    elif hasattr(image, "convert"):
        image = np.asarray(image.convert("L"))
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(
            f"image: expected a 2-D grayscale image, got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError("image: expected values in [0, 1] (floats) or 0..255 (uint8)")
    return blur(arr, feather) if feather > 0 else arr


def blur(mask: np.ndarray, feather: float) -> np.ndarray:
    """A separable Gaussian blur with sigma = feather (fraction of each side)."""
    mask = np.asarray(mask, dtype=np.float64)
    for axis in (0, 1):
        n = mask.shape[axis]
        sigma = feather * n
        if sigma <= 0:
            continue
        r = max(1, int(3 * sigma))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        k /= k.sum()
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(mask, pad, mode="edge")
        mask = np.apply_along_axis(
            lambda v: np.convolve(v, k, mode="valid"), axis, padded
        )
    return np.clip(mask, 0, 1).astype(np.float32)


def _area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights: each output cell averages the input cells it overlaps."""
    edges_in = np.arange(n_in + 1) / n_in
    edges_out = np.arange(n_out + 1) / n_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    return np.clip(hi - lo, 0, None) * n_out


def resize(mask: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Area-average resize of a 2-D mask to (H, W) (2-D, never a 1-D stretch)."""
    mask = np.asarray(mask, dtype=np.float64)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D array, got shape {mask.shape}")
    h, w = _check_size(shape)
    if mask.shape == (h, w):
        return mask.astype(np.float32)
    out = _area_matrix(h, mask.shape[0]) @ mask @ _area_matrix(w, mask.shape[1]).T
    return np.clip(out, 0, 1).astype(np.float32)


MaskLike = Union[np.ndarray, str]


def as_mask(mask) -> np.ndarray:
    """Validate a mask: 2-D, finite, values in [0, 1]; names like ``left`` or ``top-left`` work too."""
    if isinstance(mask, str):
        if mask in HALVES:
            return half(mask)
        if mask in QUADRANTS:
            return quadrant(mask)
        if mask in ("centre", "center"):
            return centre_square()
        if mask == "all":
            return np.ones(DEFAULT_SIZE, np.float32)
        raise ValueError(
            f"mask: expected an array or one of {HALVES + QUADRANTS + ('centre', 'all')}, got {mask!r}"
        )
    arr = np.asarray(mask, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"mask: expected a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError("mask: expected finite values in [0, 1]")
    return arr
