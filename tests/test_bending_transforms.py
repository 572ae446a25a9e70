"""Property tests of the pure bending maths (numpy and MLX agree)."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pulse_plugin.bending import transforms as T

SETTINGS = settings(max_examples=25, deadline=None)

shapes = st.tuples(st.integers(1, 3), st.integers(2, 12), st.integers(2, 12))
prob_maps = shapes.flatmap(
    lambda s: arrays(np.float32, s, elements=st.floats(0, 1, width=32))
)
finite_maps = shapes.flatmap(
    lambda s: arrays(
        np.float32,
        s,
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    )
)

PARAMS = {
    "scale": dict(factor=2.5),
    "regional_mask": dict(region=(0.0, 0.0, 0.5, 1.0), feather=0.2),
    "blur": dict(kernel_size=5, sigma=1.5),
    "sharpen": dict(amount=2.0, kernel_size=3, sigma=1.0),
    "translate": dict(dx=0.25, dy=-0.1),
    "rotate": dict(degrees=30.0),
    "spatial_scale": dict(zoom=1.5, center=(0.4, 0.6)),
    "flip": dict(direction="both"),
    "frequency_filter": dict(kind="band", cutoff=0.5, band=(0.1, 0.6)),
}


@pytest.mark.parametrize("mode", T.MODES)
@SETTINGS
@given(m=prob_maps)
def test_strength_zero_is_identity(mode, m):
    out, bad = T.bend_map(m, mode, strength=0.0, **PARAMS[mode])
    assert np.array_equal(out, m) and int(bad) == 0


@SETTINGS
@given(m=prob_maps)
def test_neutral_parameters_are_identities(m):
    for mode, params in [
        ("scale", dict(factor=1.0)),
        ("translate", dict(dx=0.0, dy=0.0)),
        ("rotate", dict(degrees=0.0)),
        ("rotate", dict(degrees=360.0)),
        ("spatial_scale", dict(zoom=1.0)),
    ]:
        assert np.array_equal(T.transform(m, mode, **params), m), mode


@SETTINGS
@given(m=prob_maps, direction=st.sampled_from(T.FLIPS))
def test_flip_twice_is_identity(m, direction):
    once = T.flip(m, direction)
    assert np.array_equal(T.flip(once, direction), m)
    if direction == "horizontal":
        assert np.array_equal(once[..., 0], m[..., -1])


@SETTINGS
@given(
    p=shapes.flatmap(
        lambda s: arrays(
            np.float32, s, elements=st.floats(-10, 1e6, width=32, allow_subnormal=False)
        )
    )
)
def test_renormalized_rows_sum_to_one(p):
    q = T.renormalize(p)
    assert (q >= 0).all()
    assert np.allclose(q.sum(-1), 1.0, atol=1e-5)


@SETTINGS
@given(m=prob_maps, dx=st.floats(-0.5, 0.5), dy=st.floats(-0.5, 0.5))
def test_translate_back_restores_interior(m, dx, dy):
    h, w = m.shape[-2:]
    sy, sx = abs(int(round(dy * h))), abs(int(round(dx * w)))
    back = T.translate(T.translate(m, dx, dy), -dx, -dy)
    interior = (slice(None), slice(sy, h - sy), slice(sx, w - sx))
    assert np.array_equal(back[interior], m[interior])


@SETTINGS
@given(
    m=prob_maps,
    x=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    y=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    feather=st.floats(0, 0.5),
)
def test_regional_mask_is_zero_outside_feathered_region(m, x, y, feather):
    x1, x2 = sorted(x)
    y1, y2 = sorted(y)
    h, w = m.shape[-2:]
    out = T.regional_mask(m, (x1, y1, x2, y2), feather)
    u = (np.arange(w) + 0.5) / w
    v = (np.arange(h) + 0.5) / h
    outside = ((u < x1 - feather) | (u > x2 + feather))[None, :] | (
        (v < y1 - feather) | (v > y2 + feather)
    )[:, None]
    assert (out[:, outside] == 0).all()
    inside = ((u >= x1) & (u <= x2))[None, :] & ((v >= y1) & (v <= y2))[:, None]
    assert np.array_equal(out[:, inside], m[:, inside])


@pytest.mark.parametrize("mode", T.MODES)
@SETTINGS
@given(m=finite_maps, strength=st.floats(0, 1))
def test_no_mode_produces_non_finite_values(mode, m, strength):
    out, _ = T.bend_map(m, mode, strength=strength, **PARAMS[mode])
    assert np.isfinite(out).all()
    zeros, _ = T.bend_map(np.zeros_like(m), mode, strength=strength, **PARAMS[mode])
    assert np.isfinite(zeros).all()
    assert np.isfinite(T.renormalize(out)).all()


def test_guard_counts_and_replaces_overflow():
    m = np.full((4, 4), 3e38, np.float32)
    out, bad = T.bend_map(m, "scale", strength=1.0, factor=10.0)
    assert int(bad) == 16 and np.array_equal(out, m)


@pytest.mark.parametrize("mode", T.MODES)
def test_mlx_matches_numpy(mode):
    m = np.random.default_rng(0).random((2, 6, 8), dtype=np.float32)
    out_np, _ = T.bend_map(m, mode, strength=0.7, **PARAMS[mode])
    out_mx, _ = T.bend_map(mx.array(m), mode, strength=0.7, **PARAMS[mode])
    assert isinstance(out_mx, mx.array) and out_mx.dtype == mx.float32
    np.testing.assert_allclose(np.array(out_mx), out_np, rtol=1e-5, atol=1e-6)


def test_modes_do_what_they_say():
    m = np.zeros((8, 8), np.float32)
    m[2, 3] = 1.0
    assert T.translate(m, dx=0.25, dy=0.125)[3, 5] == 1.0
    assert T.flip(m, "vertical")[5, 3] == 1.0
    assert T.rotate(m, 180.0)[5, 4] == pytest.approx(1.0, abs=1e-6)
    assert T.blur(m, 3, 1.0).max() < 1.0 and T.blur(m, 3, 1.0).sum() == pytest.approx(1)
    assert T.sharpen(m, 1.0, 3, 1.0)[2, 3] > 1.0
    low = T.frequency_filter(np.ones((8, 8), np.float32), "low", 0.1)
    assert np.allclose(low, 1.0, atol=1e-6)
    high = T.frequency_filter(np.ones((8, 8), np.float32), "high", 0.1)
    assert np.allclose(high, 0.0, atol=1e-6)
    big = T.spatial_scale(np.pad(np.ones((2, 2), np.float32), 3), 2.0)
    assert (big > 0.5).sum() > 4
    assert np.allclose(T.resize_bilinear(np.ones((2, 3, 4), np.float32), (6, 8)), 1)
