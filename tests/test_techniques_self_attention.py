"""Self-attention control between regions: the probabilities really computed."""

import numpy as np
import pytest
from test_pulse_support import ProbRecorder, Recorder, generate

from pulse_plugin.masks import half, resize
from pulse_plugin.pulse import Pulse

SITE = "down.0.0.0"


def self_probs(p, setup=None, site=SITE):
    pulse = Pulse(p)
    if setup is not None:
        setup(pulse)
    rec, probs = Recorder(), ProbRecorder()
    pulse.add_link(site, "self", rec)
    pulse.add_link(site, "self", probs)
    with pulse:
        generate(p, steps=1)
    return probs.probs[(site, 0)], rec.at(site)["call"].meta.spatial_shape


@pytest.mark.parametrize("which,site", [("sd", SITE), ("xl", "down.1.0.0")])
@pytest.mark.parametrize("scale", [3.0, 0.25])
def test_region_to_region_scaling_is_exact(pipe, xl, which, site, scale):
    p = pipe if which == "sd" else xl
    p0, shape = self_probs(p, site=site)
    p1, _ = self_probs(
        p, lambda pl: pl.self_attention("left", "right", scale, block=site), site=site
    )
    a = resize(half("left"), shape).reshape(-1) == 1
    b = resize(half("right"), shape).reshape(-1) == 1
    exp = p0[:1].astype(np.float64)
    exp[..., b] *= scale
    exp = exp / exp.sum(-1, keepdims=True)
    np.testing.assert_allclose(p1[:1, :, a], exp[:, :, a], rtol=2e-5, atol=1e-7)
    assert np.array_equal(p1[:1, :, ~a], p0[:1, :, ~a])  # queries outside A untouched
    assert np.array_equal(p1[1:], p0[1:])  # negative-prompt rows untouched


def test_suppress_to_zero_and_symmetry(pipe):
    p0, shape = self_probs(pipe)
    p1, _ = self_probs(
        pipe, lambda pl: pl.suppress_interaction("left", "right", 0.0, block=SITE)
    )
    a = resize(half("left"), shape).reshape(-1) == 1
    assert np.all(p1[:1][:, :, a][..., ~a] == 0) and np.all(
        p1[:1][:, :, ~a][..., a] == 0
    )
    p2, _ = self_probs(
        pipe, lambda pl: pl.enhance_interaction("left", "right", 2.0, block=SITE)
    )
    assert np.all(p2[:1][:, :, a][..., ~a].sum(-1) > p0[:1][:, :, a][..., ~a].sum(-1))


def test_window_outside_is_bit_identical_and_errors(pipe):
    base = generate(pipe, steps=3)
    with pytest.warns(UserWarning, match="matches no step"):
        with Pulse(pipe) as pulse:
            pulse.self_attention("left", "right", 0.1, sigma_start=0.02, sigma_end=0.01)
            assert np.array_equal(generate(pipe, steps=3), base)
    with pytest.raises(ValueError, match="cuts every key"):
        with Pulse(pipe) as pulse:
            pulse.self_attention("left", "all", 0.0, block=SITE)
            generate(pipe, steps=1)
    with pytest.raises(ValueError, match="scale"):
        Pulse(pipe).enhance_interaction("left", "right", 0.5)
