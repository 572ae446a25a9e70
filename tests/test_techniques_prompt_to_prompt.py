"""Prompt-to-prompt: the edit row takes the source's maps exactly; pairing, blending, refusals."""

import mlx.core as mx
import numpy as np
import pytest
from test_pulse_support import ProbRecorder, Recorder, generate

from pulse_plugin import attention
from pulse_plugin.pulse import Pulse
from pulse_plugin.techniques.prompt_to_prompt import (
    PairedSampler,
    blend_mask,
    edited_probs,
    global_key,
    set_global_key,
    token_mapping,
)

SOURCE = "a red cat on a blue sea"
SWAPPED = "a blue cat on a red sea"  # the same token count
ADDED = "a red cat on a big blue sea"
SITE = "down.1.0.0"


def _pipe(which, pipe, xl):
    return pipe if which == "sd" else xl


def _run(p, edit, setup=None, steps=2, **kw):
    rec, probs = Recorder(), ProbRecorder()
    with Pulse(p) as pulse:
        technique = pulse.prompt_to_prompt(SOURCE, edit, **kw)
        pulse.add_link(SITE, "cross", rec)
        pulse.add_link(SITE, "cross", probs)
        if setup is not None:
            setup(pulse)
        x = generate(p, prompt=SOURCE, steps=steps, n_images=2)
    return x, technique, rec, probs


def test_token_mapping():
    assert token_mapping([1, 5, 6, 2], [1, 7, 6, 2], "replace").tolist() == [0, 1, 2, 3]
    assert token_mapping([1, 5, 6, 2], [1, 5, 9, 6, 2], "refine").tolist() == [
        0,
        1,
        -1,
        2,
        3,
    ]
    with pytest.raises(ValueError, match="same token count"):
        token_mapping([1, 5, 2], [1, 5, 6, 2], "replace")


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_replace_gives_the_edit_the_sources_maps(pipe, xl, which):
    p = _pipe(which, pipe, xl)
    _, _, _, probs = _run(p, SWAPPED)
    for (block, step), pr in probs.probs.items():
        assert np.array_equal(pr[1], pr[0])  # conditional rows [source, edit]
    # outside the window the rows differ
    with pytest.warns(UserWarning, match="PromptToPrompt"):
        _, _, _, late = _run(p, SWAPPED, sigma_start=1e-6, sigma_end=0.0)
    [pr] = [v for (b, s), v in late.probs.items() if s == 0]
    assert not np.array_equal(pr[1], pr[0])


def test_refine_maps_aligned_tokens_and_keeps_new_ones(pipe):
    _, technique, rec, probs = _run(pipe, ADDED, mode="refine")
    r = rec.at(SITE)
    q, k, _ = attention.project(r["call"].attn, r["x"], r["memory"])
    raw = attention.probabilities(q, k, r["call"].mask)
    mapping, _ = technique._mapping(raw.shape[-1])
    expected = edited_probs(raw[0], raw[1], mapping, None)
    got = probs.probs[(SITE, 0)]
    assert np.array_equal(got[1], np.array(expected))
    assert np.array_equal(got[0], np.array(raw[0]))  # the source row untouched
    new = [j for j in range(len(technique.edit_ids)) if mapping[j] < 0]
    assert new and np.array_equal(got[1][..., new], np.array(raw[1][..., new]))


def test_reweight_scales_the_chosen_words_maps(pipe):
    _, technique, rec, probs = _run(
        pipe, SOURCE, mode="reweight", reweight={"cat": 2.0}
    )
    got = probs.probs[(SITE, 0)]
    positions = sorted(technique.scales)
    assert np.allclose(got[1][..., positions], 2.0 * got[0][..., positions], rtol=1e-6)
    others = [j for j in range(got.shape[-1]) if j not in positions]
    assert np.array_equal(got[1][..., others], got[0][..., others])


def test_self_window_copies_self_attention(pipe):
    probs = ProbRecorder()
    _run(
        pipe,
        SWAPPED,
        setup=lambda pulse: pulse.add_link(SITE, "self", probs),
        self_window=(None, None),
    )
    for pr in probs.probs.values():
        assert np.array_equal(pr[1], pr[0])


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_source_row_is_the_source_image(pipe, xl, which):
    """One noise for both rows; the source row is the source prompt's own run (batch 4, not 2)."""
    p = _pipe(which, pipe, xl)
    plain = generate(p, prompt=SOURCE, steps=3)
    x, _, _, _ = _run(p, SWAPPED, steps=3)
    scale = np.abs(plain).max()
    assert np.abs(x[0] - plain[0]).max() <= 1e-3 * scale
    same, _, _, _ = _run(p, SOURCE, steps=3)
    # one noise for both rows; rows of one batch may round differently under some
    # BLAS kernels (Haswell), so close, not bit-identical (the sampler is tested exactly)
    assert np.abs(same[0] - same[1]).max() <= 1e-4 * scale
    assert "_get_text_conditioning" not in vars(p) and not isinstance(
        p.sampler, PairedSampler
    )


def test_paired_sampler_steps_each_row_from_one_random_state(xl):
    sampler = PairedSampler(xl.sampler)
    t, t_prev = xl.sampler.timesteps(4)[1]
    x = mx.random.normal((1, 4, 4, 4), key=mx.random.key(1))
    eps = mx.random.normal((1, 4, 4, 4), key=mx.random.key(2))
    mx.random.seed(5)
    alone = xl.sampler.step(eps, x, t, t_prev)
    after_alone = global_key()
    mx.random.seed(5)
    pair = sampler.step(mx.concatenate([eps, eps]), mx.concatenate([x, x]), t, t_prev)
    assert np.array_equal(np.array(pair[0]), np.array(alone[0]))
    assert np.array_equal(np.array(pair[1]), np.array(alone[0]))
    assert global_key() == after_alone  # the global stream moves as for one image
    set_global_key(after_alone)
    assert global_key() == after_alone


def test_local_blend_keeps_the_source_outside_the_mask(pipe):
    # A random tiny model attends almost uniformly: mask "cat" out of the right half
    # so that its map, and so the blend mask, is the left half (dilated by one column).
    x, technique, _, _ = _run(
        pipe,
        SWAPPED,
        setup=lambda pulse: pulse.mask_tokens("cat", mask="right", prompt=SOURCE),
        local_blend=["cat"],
        blend_block="detail",
    )
    mask = np.array(technique.last_mask)[..., 0]
    assert mask[:, :5].all() and not mask[:, 5:].any()
    assert np.array_equal(x[1][mask == 0], x[0][mask == 0])
    assert not np.array_equal(x[1][mask == 1], x[0][mask == 1])


def test_blend_mask():
    maps = np.zeros((2, 6, 6), np.float32)
    maps[0, 1, 1] = 1.0
    maps[1, 4, 4] = 2.0
    mask = np.array(blend_mask(mx.array(maps), 0.5))[..., 0]
    expected = np.zeros((6, 6))
    expected[0:3, 0:3] = 1
    expected[3:6, 3:6] = 1
    assert np.array_equal(mask, expected)


def test_refusals(pipe):
    with Pulse(pipe) as pulse:
        with pytest.raises(ValueError, match="same token count"):
            pulse.prompt_to_prompt(SOURCE, ADDED)
        with pytest.raises(ValueError, match="need mode='reweight'"):
            pulse.prompt_to_prompt(SOURCE, SWAPPED, reweight={"cat": 2.0})
        with pytest.raises(ValueError, match="in neither prompt"):
            pulse.prompt_to_prompt(SOURCE, SWAPPED, local_blend=["dog"])
        with pytest.raises(ValueError, match="non-empty prompt"):
            pulse.prompt_to_prompt(SOURCE, " ")
    with Pulse(pipe) as pulse:
        pulse.prompt_to_prompt(SOURCE, SWAPPED)
        with pytest.raises(ValueError, match="n_images=2"):
            generate(pipe, prompt=SOURCE, steps=1)
        with pytest.raises(ValueError, match="n_images=2"):
            generate(pipe, prompt="a dog", steps=1, n_images=2)
    assert "_get_text_conditioning" not in vars(pipe)
