"""Pure maths of attention bending: the nine modes on (..., H, W) maps, numpy or MLX.

Every function takes maps whose last two axes are (H, W) (leading axes are a
batch: heads, tokens, ...) and returns an array of the same type, shape and
dtype. Geometry (grids, kernels, filters) is computed in numpy once and moved
to the map's backend, so the MLX path stays lazy and needs no sync.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Tuple

import mlx.core as mx
import numpy as np

MODES = (
    "scale",
    "regional_mask",
    "blur",
    "sharpen",
    "translate",
    "rotate",
    "spatial_scale",
    "flip",
    "frequency_filter",
)
FLIPS = ("horizontal", "vertical", "both")
FILTERS = ("low", "high", "band")

Array = Any  # np.ndarray or mx.array


def backend(a: Array):
    """The array module of a: mlx.core or numpy."""
    return mx if isinstance(a, mx.array) else np


def _to(a: Array, values: np.ndarray) -> Array:
    """values (numpy, float32) on a's backend."""
    values = np.asarray(values, dtype=np.float32)
    return mx.array(values) if isinstance(a, mx.array) else values


def _cast(a: Array, out: Array) -> Array:
    return out.astype(a.dtype)


def scale(m: Array, factor: float) -> Array:
    """Multiply the map by factor."""
    if factor == 1.0:
        return m
    return _cast(m, m * factor)


def region_weights(
    shape: Tuple[int, int], region: Sequence[float], feather: float = 0.0
) -> np.ndarray:
    """(H, W) weights: 1 inside region [x1, y1, x2, y2] (0-1), a linear ramp over feather, 0 beyond."""
    h, w = shape
    x1, y1, x2, y2 = region
    u = (np.arange(w) + 0.5) / w
    v = (np.arange(h) + 0.5) / h
    du = np.maximum(np.maximum(x1 - u, u - x2), 0.0)[None, :]
    dv = np.maximum(np.maximum(y1 - v, v - y2), 0.0)[:, None]
    d = np.sqrt(du**2 + dv**2)
    if feather <= 0:
        return (d == 0).astype(np.float32)
    with np.errstate(over="ignore"):  # a tiny feather: d / feather -> inf, clipped to 0
        return np.clip(1.0 - d / feather, 0.0, 1.0).astype(np.float32)


def regional_mask(m: Array, region: Sequence[float], feather: float = 0.0) -> Array:
    """Keep the map inside region, fade it over feather, zero it beyond."""
    weights = region_weights(tuple(m.shape[-2:]), region, feather)
    return _cast(m, m * _to(m, weights))


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian of odd length size."""
    r = np.arange(size) - (size - 1) / 2
    k = np.exp(-0.5 * (r / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def _conv_axis(m: Array, kernel: np.ndarray, axis: int) -> Array:
    """Convolve along axis (-1 or -2) with edge padding."""
    xp = backend(m)
    r = len(kernel) // 2
    pad = [(0, 0)] * m.ndim
    pad[axis] = (r, r)
    padded = xp.pad(m, pad, mode="edge")
    n = m.shape[axis]
    out = None
    for i, k in enumerate(kernel):
        piece = padded[..., i : i + n] if axis == -1 else padded[..., i : i + n, :]
        term = piece * float(k)
        out = term if out is None else out + term
    return out


def blur(m: Array, kernel_size: int = 5, sigma: float = 1.0) -> Array:
    """Separable Gaussian blur (edge padding) of odd kernel_size."""
    if kernel_size <= 1:
        return m
    k = gaussian_kernel(kernel_size, sigma)
    return _cast(m, _conv_axis(_conv_axis(m, k, -1), k, -2))


def sharpen(
    m: Array, amount: float = 1.0, kernel_size: int = 5, sigma: float = 1.0
) -> Array:
    """Unsharp mask: m + amount * (m - blur(m))."""
    if amount == 0:
        return m
    return _cast(m, m + (m - blur(m, kernel_size, sigma)) * amount)


def shift_pixels(m: Array, sy: int, sx: int) -> Array:
    """Shift by whole pixels (down sy, right sx), filling with zeros."""
    if sy == 0 and sx == 0:
        return m
    xp = backend(m)
    h, w = m.shape[-2:]
    if abs(sy) >= h or abs(sx) >= w:
        return m * 0
    pad = [(0, 0)] * (m.ndim - 2) + [
        (max(sy, 0), max(-sy, 0)),
        (max(sx, 0), max(-sx, 0)),
    ]
    padded = xp.pad(m, pad)
    y0, x0 = max(-sy, 0), max(-sx, 0)
    return padded[..., y0 : y0 + h, x0 : x0 + w]


def translate(m: Array, dx: float = 0.0, dy: float = 0.0) -> Array:
    """Shift by (dx, dy) fractions of the width/height (right, down), rounded to pixels."""
    h, w = m.shape[-2:]
    return shift_pixels(m, int(round(dy * h)), int(round(dx * w)))


def _sample(m: Array, sy: np.ndarray, sx: np.ndarray) -> Array:
    """Bilinear sampling of m at source pixel coordinates (H, W), zero outside."""
    h, w = m.shape[-2:]
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    flat = m.reshape(*m.shape[:-2], h * w)
    xp = backend(m)
    out = None
    for oy, ox, wt in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + oy, x0 + ox
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w) & (wt > 0)
        idx = (np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)).astype(np.int32)
        if not valid.any():
            continue
        idx_b = mx.array(idx.reshape(-1)) if xp is mx else idx.reshape(-1)
        gathered = xp.take(flat, idx_b, axis=-1).reshape(m.shape)
        term = gathered * _to(m, np.where(valid, wt, 0.0))
        out = term if out is None else out + term
    return _cast(m, m * 0 if out is None else out)


def _grid(shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    h, w = shape
    return np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )


def rotate(
    m: Array, degrees: float = 0.0, center: Sequence[float] = (0.5, 0.5)
) -> Array:
    """Rotate counter-clockwise by degrees about center (0-1), bilinear, zero fill."""
    if degrees % 360 == 0:
        return m
    h, w = m.shape[-2:]
    yy, xx = _grid((h, w))
    cx, cy = center[0] * w - 0.5, center[1] * h - 0.5
    t = math.radians(degrees)
    dx, dy = xx - cx, yy - cy
    sx = cx + math.cos(t) * dx - math.sin(t) * dy
    sy = cy + math.sin(t) * dx + math.cos(t) * dy
    return _sample(m, sy, sx)


def spatial_scale(
    m: Array, zoom: float = 1.0, center: Sequence[float] = (0.5, 0.5)
) -> Array:
    """Zoom by zoom about center (0-1): > 1 enlarges the pattern, < 1 shrinks it."""
    if zoom == 1.0:
        return m
    h, w = m.shape[-2:]
    yy, xx = _grid((h, w))
    cx, cy = center[0] * w - 0.5, center[1] * h - 0.5
    return _sample(m, cy + (yy - cy) / zoom, cx + (xx - cx) / zoom)


def flip(m: Array, direction: str = "horizontal") -> Array:
    """Mirror left-right ('horizontal'), top-bottom ('vertical') or both."""
    if direction in ("horizontal", "both"):
        m = m[..., ::-1]
    if direction in ("vertical", "both"):
        m = m[..., ::-1, :]
    return m


def frequency_mask(
    shape: Tuple[int, int],
    kind: str = "low",
    cutoff: float = 0.5,
    band: Sequence[float] = (0.25, 0.75),
) -> np.ndarray:
    """(H, W) 0/1 mask over the 2-D FFT; radius 1.0 is the Nyquist frequency."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    r = np.sqrt(fy**2 + fx**2) / 0.5
    if kind == "low":
        keep = r <= cutoff
    elif kind == "high":
        keep = r > cutoff
    else:
        keep = (r >= band[0]) & (r <= band[1])
    return keep.astype(np.float32)


def frequency_filter(
    m: Array,
    kind: str = "low",
    cutoff: float = 0.5,
    band: Sequence[float] = (0.25, 0.75),
) -> Array:
    """Low-, high- or band-pass filter of the map's 2-D spectrum."""
    xp = backend(m)
    mask = _to(m, frequency_mask(tuple(m.shape[-2:]), kind, cutoff, band))
    spectrum = xp.fft.fft2(m.astype(xp.float32), axes=(-2, -1)) * mask
    return _cast(m, xp.real(xp.fft.ifft2(spectrum, axes=(-2, -1))))


def transform(m: Array, mode: str, **params) -> Array:
    """Apply one of MODES with its parameters."""
    fn = {
        "scale": scale,
        "regional_mask": regional_mask,
        "blur": blur,
        "sharpen": sharpen,
        "translate": translate,
        "rotate": rotate,
        "spatial_scale": spatial_scale,
        "flip": flip,
        "frequency_filter": frequency_filter,
    }.get(mode)
    if fn is None:
        raise ValueError(f"mode: unknown {mode!r}, expected one of {MODES}")
    return fn(m, **params)


def blend(original: Array, bent: Array, strength: float) -> Array:
    """(1 - strength) * original + strength * bent; strength 0 returns original itself."""
    if strength == 0:
        return original
    if strength == 1:
        return bent
    return _cast(original, original * (1 - strength) + bent * strength)


def guard(original: Array, bent: Array) -> Tuple[Array, Array]:
    """Replace non-finite values of bent by the original's; also the number replaced."""
    xp = backend(bent)
    bad = xp.logical_not(xp.isfinite(bent))
    return xp.where(bad, original, bent), xp.sum(bad)


def clamp_nonnegative(m: Array) -> Array:
    """Negative values (sharpen, high-pass) become 0: probabilities are non-negative."""
    return backend(m).maximum(m, 0).astype(m.dtype)


def bend_map(
    m: Array, mode: str, strength: float = 1.0, **params
) -> Tuple[Array, Array]:
    """transform, clamp at 0, blend by strength, guard: (bent map, count of non-finite values replaced)."""
    xp = backend(m)
    if strength == 0:
        return m, xp.array(0)
    with np.errstate(all="ignore"):  # overflow is expected here and guarded below
        bent = clamp_nonnegative(transform(m, mode, **params))
        bent, bad = guard(m, bent)
        out, bad2 = guard(m, blend(m, bent, strength))
    return out, bad + bad2


def renormalize(p: Array, axis: int = -1) -> Array:
    """Rows along axis made non-negative and summing to 1 (uniform where a row has no mass)."""
    xp = backend(p)
    p = xp.maximum(xp.where(xp.isfinite(p), p, 0), 0)
    top = xp.max(p, axis=axis, keepdims=True)
    ok = xp.isfinite(top) & (top > 0)
    safe_top = xp.where(ok, top, xp.ones_like(top))
    q = p / safe_top
    total = xp.sum(q, axis=axis, keepdims=True)
    ok = ok & xp.isfinite(total) & (total > 0)
    n = p.shape[axis]
    uniform = xp.ones_like(p) / n
    return xp.where(ok, q / xp.where(ok, total, xp.ones_like(total)), uniform).astype(
        p.dtype
    )


def resize_bilinear(m: Array, size: Tuple[int, int]) -> Array:
    """Resize (..., H, W) maps to size with half-pixel bilinear sampling (edges clamped)."""
    h, w = m.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return m
    sy = np.clip((np.arange(th) + 0.5) * h / th - 0.5, 0, h - 1)
    sx = np.clip((np.arange(tw) + 0.5) * w / tw - 0.5, 0, w - 1)
    y0 = np.floor(sy).astype(np.int32)
    x0 = np.floor(sx).astype(np.int32)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (sy - y0)[:, None], (sx - x0)[None, :]
    xp = backend(m)

    def idx(a):
        return mx.array(a) if xp is mx else a

    rows0 = xp.take(m, idx(y0), axis=-2)
    rows1 = xp.take(m, idx(y1), axis=-2)
    rows = rows0 * _to(m, 1 - fy) + rows1 * _to(m, fy)
    out = xp.take(rows, idx(x0), axis=-1) * _to(m, 1 - fx) + xp.take(
        rows, idx(x1), axis=-1
    ) * _to(m, fx)
    return _cast(m, out)
