"""Token re-weighting and masking: the probabilities the attention really computed."""

import mlx.core as mx
import numpy as np
import pytest
from test_pulse_support import PROMPT, ProbRecorder, Recorder, generate

from pulse_plugin import attention
from pulse_plugin.masks import half, resize
from pulse_plugin.pulse import Pulse, PulseError

SITE = "down.1.0.0"


def probs_of(p, setup=None, site=SITE, steps=1):
    """Probabilities (and the call record) at site, step 0, with setup(pulse) applied first."""
    pulse = Pulse(p, prompt=PROMPT)
    if setup is not None:
        setup(pulse)
    rec, probs = Recorder(), ProbRecorder()
    pulse.add_link(site, "cross", rec)
    pulse.add_link(site, "cross", probs)
    with pulse:
        generate(p, steps=steps)
    return probs.probs[(site, 0)], rec.at(site), pulse


def expected_scaled(p0, positions, scale):
    """s * p_j / Z on positions."""
    w = np.ones(p0.shape[-1])
    w[positions] = scale
    q = p0.astype(np.float64) * w
    return q / q.sum(-1, keepdims=True)


@pytest.mark.parametrize("which", ["sd", "xl"])
@pytest.mark.parametrize("scale", [2.5, 0.3])
def test_reweight_scales_and_renormalises_conditional_rows(pipe, xl, which, scale):
    p = pipe if which == "sd" else xl
    p0, _, _ = probs_of(p)
    p1, _, pulse = probs_of(p, lambda pl: pl.reweight("red cat", scale, block=SITE))
    j = pulse.positions("red cat")
    assert j[0] == 2  # BOS first, no 77 offset on SDXL
    n = p0.shape[0] // 2
    np.testing.assert_allclose(
        p1[:n], expected_scaled(p0[:n], j, scale), rtol=2e-5, atol=1e-7
    )
    assert np.array_equal(p1[n:], p0[n:])  # negative-prompt rows untouched


def test_masking_gives_probability_zero_and_keeps_the_rest(pipe):
    p0, _, _ = probs_of(pipe)
    p1, _, pulse = probs_of(pipe, lambda pl: pl.mask_tokens("blue", block=SITE))
    j = pulse.positions("blue")
    assert np.all(p1[:1, ..., j] == 0)
    np.testing.assert_allclose(
        p1[:1], expected_scaled(p0[:1], j, 0.0), rtol=2e-5, atol=1e-7
    )
    assert np.array_equal(p1[1:], p0[1:])


def test_keep_only(pipe):
    p0, _, pulse = probs_of(pipe, lambda pl: None)
    p1, _, pulse = probs_of(pipe, lambda pl: pl.keep_only(["cat", "sea"], block=SITE))
    keep = [0] + pulse.positions("cat") + pulse.positions("sea")
    w = np.zeros(p0.shape[-1])
    w[keep] = 1
    q = p0[:1] * w
    np.testing.assert_allclose(
        p1[:1], q / q.sum(-1, keepdims=True), rtol=2e-5, atol=1e-7
    )
    assert np.all(np.delete(p1[:1], keep, axis=-1) == 0)


def test_spatial_mask_reweights_only_inside(pipe):
    p0, r, _ = probs_of(pipe)
    p1, _, pulse = probs_of(
        pipe, lambda pl: pl.reweight("red", 3.0, block=SITE, mask="left")
    )
    j = pulse.positions("red")
    m = resize(half("left"), r["call"].meta.spatial_shape).reshape(-1)
    inside, outside = m == 1, m == 0
    assert inside.any() and outside.any() and np.all(inside | outside)
    exp = expected_scaled(p0[:1], j, 3.0)
    np.testing.assert_allclose(
        p1[:1, :, inside], exp[:, :, inside], rtol=2e-5, atol=1e-7
    )
    assert np.array_equal(p1[:1, :, outside], p0[:1, :, outside])


def test_logit_mode_is_corepulse_scaling(pipe):
    p0, r, _ = probs_of(pipe)
    p1, _, pulse = probs_of(
        pipe, lambda pl: pl.reweight("red", 5.0, block=SITE, mode="logit")
    )
    j = pulse.positions("red")
    q, k, _ = attention.project(r["call"].attn, r["x"], r["memory"])
    logits = np.array(
        (q * attention.scale_of(q)) @ k.swapaxes(-1, -2), dtype=np.float64
    )
    logits[:1, ..., j] *= 5.0
    e = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(
        p1[:1], (e / e.sum(-1, keepdims=True))[:1], rtol=1e-4, atol=1e-6
    )
    assert np.array_equal(p1[1:], p0[1:])


def test_windows_and_unselected_blocks_are_bit_identical(pipe):
    base = generate(pipe, steps=3)
    with pytest.warns(UserWarning, match="visits sigmas"):
        with Pulse(pipe, prompt=PROMPT) as pulse:
            pulse.reweight("red", 4.0, sigma_start=0.05, sigma_end=0.0)
            assert np.array_equal(generate(pipe, steps=3), base)
    # active from step 1 only: step 0 is the baseline bit for bit
    p0, _, _ = probs_of(pipe, steps=2)
    p1, _, _ = probs_of(
        pipe, lambda pl: pl.reweight("red", 4.0, block=SITE, steps=(1, None)), steps=2
    )
    assert np.array_equal(p0, p1)
    rec = Recorder()
    with Pulse(pipe, prompt=PROMPT) as pulse:
        pulse.add_link("all", "cross", rec)
        pulse.reweight("red", 4.0, block="mid")
        generate(pipe, steps=1)
    for r in rec.records:
        if r["block"] != "mid.0.0":
            a, x, m = r["call"].attn, r["x"], r["memory"]
            assert np.array_equal(np.array(r["out"]), np.array(a(x, m, m, None)))


def test_phrase_and_prompt_errors(pipe):
    pulse = Pulse(pipe, prompt=PROMPT)
    with pytest.raises(ValueError, match=r"not in the prompt.*\['a', 'red', 'cat'"):
        pulse.reweight("dog", 2.0)
    with pytest.raises(PulseError, match="prompt="):
        Pulse(pipe).reweight("red", 2.0)
    with pytest.raises(ValueError, match="scale"):
        pulse.reweight("red", -1.0)
    # a prompt that does not match the generation is caught when the positions do not fit
    with Pulse(pipe, prompt="a red cat on a blue sea with a large green castle") as pl:
        pl.reweight("castle", 2.0)
        with pytest.raises(ValueError, match="do not fit"):
            generate(pipe, prompt="a red cat", steps=1)
    assert mx is not None
