"""Regional injection and masks: identity, plain-injection limit, several regions, 2-D resize."""

import mlx.core as mx
import numpy as np
import pytest
from test_pulse_support import Recorder, generate

from pulse_plugin import masks
from pulse_plugin.pulse import Pulse
from pulse_plugin.techniques.regional import region_weights


def test_masks_resize_in_two_dimensions_by_area():
    left = masks.half("left", (64, 64))
    for shape in [(8, 8), (4, 4), (16, 8)]:
        r = masks.resize(left, shape)
        assert np.array_equal(r[:, : shape[1] // 2], np.ones((shape[0], shape[1] // 2)))
        assert np.all(r[:, shape[1] // 2 :] == 0)  # columns, never horizontal stripes
    odd = masks.resize(left, (3, 5))
    assert np.allclose(odd[:, 2], 0.5) and np.all(odd[:, :2] == 1)
    img = np.random.default_rng(0).random((12, 20))
    assert np.isclose(masks.resize(img, (3, 5)).mean(), img.mean())
    assert masks.quadrant("top-left", (4, 4))[:2, :2].all()
    assert masks.quadrant("top-left", (4, 4)).sum() == 4
    assert masks.centre_square(0.5, (8, 8)).sum() == 16
    c = masks.circle(0.5, 0.5, 0.25, (32, 32), feather=0.1)
    assert c[16, 16] == 1 and c[0, 0] == 0 and 0 < c[16, 8] < 1
    soft = masks.rectangle(0.25, 0, 0.75, 1, (4, 16), feather=0.125)
    assert soft[0, 0] == 0 and soft[0, 8] == 1 and 0 < soft[0, 4] < 1
    g = masks.from_image((np.eye(4) * 255).astype(np.uint8))
    assert np.array_equal(
        masks.resize(g, (2, 2)), np.array([[0.5, 0], [0, 0.5]], np.float32)
    )
    with pytest.raises(ValueError, match="mask"):
        masks.as_mask(np.full((4, 4), 2.0))
    with pytest.raises(ValueError, match="side"):
        masks.half("middle")


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_zero_mask_is_identity_and_ones_mask_is_plain_injection(pipe, xl, which):
    p = pipe if which == "sd" else xl
    base = generate(p)
    with Pulse(p) as pulse:
        pulse.regional("a large green castle", np.zeros((8, 8)), weight=0.8)
        assert np.array_equal(generate(p), base)
    with Pulse(p) as pulse:
        pulse.inject("all", "a large green castle", weight=0.8)
        plain = generate(p)
    with Pulse(p) as pulse:
        pulse.regional("a large green castle", np.ones((8, 8)), weight=0.8)
        assert np.array_equal(generate(p), plain)
    assert not np.array_equal(plain, base)


def test_two_regions_blend_exactly_per_position(pipe):
    site = "down.0.0.0"
    pulse = Pulse(pipe)
    rec = Recorder()
    pulse.add_link(site, "cross", rec)
    left, right = masks.half("left", feather=0.2), masks.half("right", feather=0.2)
    pulse.regions([("a green castle", left), ("two dogs", right, 0.5)], block=site)
    with pulse:
        generate(pipe, steps=1)
    r = rec.at(site)
    attn, x, mem = r["call"].attn, r["x"], r["memory"]
    shape = r["call"].meta.spatial_shape
    base = attn(x, mem, mem, None)
    out = base[:1]
    for prompt, w in zip(
        ["a green castle", "two dogs"], region_weights([left, right], [1.0, 0.5], shape)
    ):
        e = pulse.embedding(prompt)
        out = out + mx.array(w.reshape(1, -1, 1)) * (attn(x[:1], e, e, None) - base[:1])
    assert np.array_equal(np.array(r["out"][:1]), np.array(out))
    assert np.array_equal(np.array(r["out"][1:]), np.array(base[1:]))
    # left columns follow the first prompt only, right columns the second only
    w_left, w_right = region_weights([left, right], [1.0, 0.5], shape)
    grid_l, grid_r = w_left.reshape(shape), w_right.reshape(shape)
    assert np.all(grid_l[:, 0] == 1) and np.all(grid_r[:, 0] == 0)
    assert np.all(grid_r[:, -1] == 0.5) and np.all(grid_l[:, -1] == 0)


def test_overlapping_regions_are_normalised():
    ones = np.ones((4, 4))
    w = region_weights([ones, ones], [1.0, 1.0], (2, 2))
    assert np.all(w[0] == 0.5) and np.all(w[1] == 0.5)
