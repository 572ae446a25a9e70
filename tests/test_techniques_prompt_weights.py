"""Weights written in the prompt: the same as the techniques they stand for, exactly."""

import mlx.core as mx
import numpy as np
import pytest
from test_pulse_support import Recorder, generate

from pulse_plugin.prompt_weights import parse
from pulse_plugin.pulse import Pulse, PulseError
from pulse_plugin.techniques.embedding_weights import weight_embeddings

MARKED = "a (red:1.5) cat on a [blue] sea"
TEXT = "a red cat on a blue sea"
SITE = "down.1.0.0"


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_attention_mode_is_reweight_bit_for_bit(pipe, xl, which):
    p = pipe if which == "sd" else xl
    plain = generate(p, prompt=TEXT)
    with Pulse(p, prompt=TEXT) as pulse:
        added = pulse.prompt_weights(MARKED)
        weighted = generate(p, prompt=TEXT)
    assert [t.scale for t in added] == [1.5, 1 / 1.1]
    with Pulse(p, prompt=TEXT) as pulse:
        pulse.reweight("red", 1.5)
        pulse.reweight("blue", 1 / 1.1)
        by_hand = generate(p, prompt=TEXT)
    assert np.array_equal(weighted, by_hand)
    assert not np.array_equal(weighted, plain)


def test_compel_syntax_gives_the_same_positions(pipe):
    with Pulse(pipe, prompt=TEXT) as pulse:
        a = pulse.prompt_weights("a (red)1.5 cat on a blue- sea", syntax="compel")
        red, blue = pulse.positions("red"), pulse.positions("blue")
    assert [(list(t.positions), t.scale) for t in a] == [(red, 1.5), (blue, 0.9)]


def test_weight_embeddings_keeps_the_mean_and_scales_relative():
    z = mx.random.normal((2, 5, 4), key=mx.random.key(0))
    w = mx.array([1.0, 2.0, 1.0, 0.5, 1.0])
    out = weight_embeddings(z, w)
    assert np.allclose(np.array(out.mean(axis=(1, 2))), np.array(z.mean(axis=(1, 2))))
    ratio = np.array(out) / np.array(z)
    assert np.allclose(ratio[:, 1] / ratio[:, 0], 2.0, rtol=1e-5)
    assert np.allclose(ratio[:, 3] / ratio[:, 0], 0.5, rtol=1e-5)
    assert np.array_equal(np.array(weight_embeddings(z, mx.ones(5))), np.array(z))


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_embedding_mode_edits_the_conditional_memory_only(pipe, xl, which):
    p = pipe if which == "sd" else xl
    plain, weighted = Recorder(), Recorder()
    with Pulse(p, prompt=TEXT) as pulse:
        pulse.add_link(SITE, "cross", plain)
        generate(p, prompt=TEXT)
    with Pulse(p, prompt=TEXT) as pulse:
        [t] = pulse.prompt_weights(MARKED, mode="embedding")
        pulse.add_link(SITE, "cross", weighted)
        generate(p, prompt=TEXT)
    before, after = plain.at(SITE)["memory"], weighted.at(SITE)["memory"]
    cond = plain.at(SITE)["call"].meta.cond_rows
    w = mx.array(t.token_weights(before.shape[1]))
    expected = weight_embeddings(before[cond], w)
    assert np.array_equal(np.array(after[cond]), np.array(expected))
    assert np.array_equal(np.array(after[cond.stop :]), np.array(before[cond.stop :]))
    [red], [blue] = pulse.positions("red"), pulse.positions("blue")
    assert dict(t.weights) == {red: 1.5, blue: pytest.approx(1 / 1.1)}


def test_bad_uses_are_refused(pipe):
    with Pulse(pipe, prompt="a red cat") as pulse:
        with pytest.raises(PulseError, match="the weighted prompt's text is"):
            pulse.prompt_weights(MARKED)
    with Pulse(pipe) as pulse:
        with pytest.raises(ValueError, match="cannot scale attention"):
            pulse.prompt_weights("a (red:-1) cat")
        with pytest.raises(ValueError, match="part of the word"):
            pulse.prompt_weights("a (re)d cat")
        with pytest.raises(ValueError, match="mode: expected one of"):
            pulse.prompt_weights("a (red) cat", mode="tokens")
        assert pulse.prompt_weights(parse("a red cat", "a1111")) == []
        [t] = pulse.prompt_weights("a (red:-1) cat", mode="embedding")
        assert t.weights == ((2, -1.0),)
