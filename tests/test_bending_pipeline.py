"""Bending through the patched tiny pipeline: phases, windows, blocks, rows, guard."""

import mlx.core as mx
import numpy as np
import pytest

from pulse_plugin.bending import config as C
from pulse_plugin.bending import processor as P
from pulse_plugin.bending import transforms as T

PROMPT = "a red (cat) on a (house)"
CLEAN = "a red cat on a house"
RUN = dict(num_steps=2, cfg_weight=7.5, latent_size=(16, 16), seed=3)
PARAMS = {
    "scale": dict(scale_factor=3.0),
    "regional_mask": dict(region=(0.0, 0.0, 0.5, 1.0), region_feather=0.1),
    "blur": dict(kernel_size=5, sigma=2.0),
    "sharpen": dict(sharpen_amount=3.0),
    "translate": dict(dx=0.25),
    "rotate": dict(angle=45.0),
    "spatial_scale": dict(zoom=1.7),
    "flip": dict(flip="horizontal"),
    "frequency_filter": dict(filter_type="high", cutoff=0.2),
}


def plain(pipe, prompt=CLEAN, **kw):
    x = None
    for x in pipe.generate_latents(prompt, **{**RUN, **kw}):
        mx.eval(x)
    return np.array(x)


@pytest.fixture
def base(tiny_pipe):
    return plain(tiny_pipe)


@pytest.mark.parametrize("mode", T.MODES)
def test_every_mode_bends_the_output_in_apply_phase(tiny_pipe, base, mode):
    bend = C.BendConfig("cat", mode, **PARAMS[mode])
    x, bender = P.generate(tiny_pipe, PROMPT, [bend], apply_to_output=True, **RUN)
    assert not np.array_equal(np.array(x), base)
    assert np.isfinite(np.array(x)).all()
    sites = tiny_pipe.unet.hooks.sites
    assert len(bender.records) == RUN["num_steps"] * len(sites)
    r = bender.records[0]
    assert r.original.shape == (16, 16) and not np.array_equal(r.bent, r.original)
    assert not tiny_pipe.unet.hooks.enabled and not tiny_pipe.unet.hooks.processors


@pytest.mark.parametrize("mode", ["scale", "regional_mask", "rotate"])
def test_visualise_phase_leaves_the_image_bit_identical(tiny_pipe, base, mode):
    bend = C.BendConfig("cat", mode, **PARAMS[mode])
    x, bender = P.generate(tiny_pipe, PROMPT, [bend], apply_to_output=False, **RUN)
    assert np.array_equal(np.array(x), base)
    assert any(not np.array_equal(r.bent, r.original) for r in bender.records)


def test_strength_zero_applied_is_bit_identical(tiny_pipe, base):
    bend = C.BendConfig("cat", "scale", scale_factor=4.0, strength=0.0)
    x, _ = P.generate(tiny_pipe, PROMPT, [bend], apply_to_output=True, **RUN)
    assert np.array_equal(np.array(x), base)


def test_only_selected_blocks_get_a_link_and_windows_hold(tiny_pipe):
    bend = C.BendConfig(
        "house", "flip", apply_to_layers=["mid", 0], apply_to_timesteps=(1, 2)
    )
    bender = P.Bender(tiny_pipe, PROMPT, [bend], apply_to_output=True)
    seen = []
    with bender:
        seen = sorted(b for b, _ in tiny_pipe.unet.hooks.processors)
        for x in tiny_pipe.generate_latents(bender.prompt, **RUN):
            mx.eval(x)
    assert seen == sorted(["mid.0.0", tiny_pipe.unet.hooks.sites[0]])
    assert {(r.step_idx, r.block_id) for r in bender.records} == {
        (1, "mid.0.0"),
        (1, tiny_pipe.unet.hooks.sites[0]),
    }
    sigmas = sorted({r.sigma for r in bender.records})
    windowed = C.BendConfig("house", "flip", sigma_range=(0.0, sigmas[0]))
    _, b2 = P.generate(tiny_pipe, PROMPT, [windowed], apply_to_output=True, **RUN)
    assert {r.step_idx for r in b2.records} == {1}


def test_tokens_positions_and_errors(tiny_pipe):
    _, bends = P.resolve_bends(
        tiny_pipe,
        "a (zebra) at (sunset)",
        [C.BendConfig("zebra", "scale"), C.BendConfig("sunset", "scale")],
    )
    tok = tiny_pipe.tokenizer

    def n(word):
        return len(tok.tokenize(word, prepend_bos=False, append_eos=False))

    assert n("zebra") > 1  # a word of several BPE pieces: all are bent
    assert bends[0].positions == tuple(range(2, 2 + n("zebra")))
    start = 2 + n("zebra") + n("at")
    assert bends[1].positions == tuple(range(start, start + n("sunset")))
    with pytest.raises(C.ConfigError, match=r"bends\[0\].token.*\['kiss', 'sunset'\]"):
        P.resolve_bends(
            tiny_pipe, "a (kiss) at (sunset)", [C.BendConfig("love", "scale")]
        )
    with pytest.raises(C.ConfigError, match=r"bends\[0\].apply_to_layers"):
        P.resolve_bends(
            tiny_pipe, PROMPT, [C.BendConfig("cat", "scale", apply_to_layers=[99])]
        )


class Meta:
    block_id, kind, spatial_shape = "mid.0.0", "cross", (4, 4)
    step_idx, timestep, sigma = 0, 999.0, 14.6
    cond_rows, uncond_rows = slice(0, 2), slice(2, 4)


def test_cond_rows_only_and_renormalised_rows():
    logits = mx.random.normal((4, 2, 16, 6), key=mx.random.key(0))
    probs = mx.softmax(logits, axis=-1)
    rb = P.ResolvedBend(
        C.BendConfig("x", "scale", scale_factor=5.0), (2, 3), frozenset()
    )
    out = np.array(P.bend_probabilities(probs, Meta, [rb]))
    p = np.array(probs)
    assert np.array_equal(out[2:], p[2:])  # unconditional rows untouched
    assert np.allclose(out.sum(-1), 1.0, atol=1e-5) and (out >= 0).all()
    assert (out[:2, ..., 2] > p[:2, ..., 2]).all()
    raw = P.ResolvedBend(
        C.BendConfig("x", "scale", scale_factor=5.0, renormalize=False),
        (2,),
        frozenset(),
    )
    out = np.array(P.bend_probabilities(probs, Meta, [raw]))
    assert np.array_equal(np.delete(out[:2], 2, -1), np.delete(p[:2], 2, -1))
    np.testing.assert_allclose(out[:2, ..., 2], 5 * p[:2, ..., 2], rtol=1e-6)


def test_non_finite_values_are_guarded_with_a_warning(tiny_pipe, monkeypatch):
    monkeypatch.setattr(T, "scale", lambda m, factor: m * float("inf"))
    bend = C.BendConfig("cat", "scale", scale_factor=2.0, name="boom")
    with pytest.warns(RuntimeWarning, match="bend 'boom'"):
        x, bender = P.generate(tiny_pipe, PROMPT, [bend], apply_to_output=True, **RUN)
    assert np.isfinite(np.array(x)).all() and bender.nonfinite["boom"] > 0


def test_sdxl_visualise_and_apply(tiny_xl):
    run = dict(num_steps=2, cfg_weight=0.0, latent_size=(16, 16), seed=1)
    base = plain(tiny_xl, **run)
    bend = C.BendConfig("cat", "translate", dx=0.25)
    x, _ = P.generate(tiny_xl, PROMPT, [bend], apply_to_output=False, **run)
    assert np.array_equal(np.array(x), base)
    x, _ = P.generate(tiny_xl, PROMPT, [bend], apply_to_output=True, **run)
    assert not np.array_equal(np.array(x), base)


def test_bender_and_recorder_attach_to_pulse(tiny_pipe):
    from pulse_plugin.capture.recorder import Recorder
    from pulse_plugin.pulse import Pulse

    bend = [C.BendConfig("cat", "flip")]
    alone, _ = P.generate(tiny_pipe, PROMPT, bend, apply_to_output=True, **RUN)
    bender = P.Bender(tiny_pipe, PROMPT, bend, apply_to_output=True)
    rec = Recorder(tiny_pipe, (16, 16))
    with Pulse(tiny_pipe) as pulse:
        bender.attach(pulse)
        rec.attach(pulse)
        x = plain(tiny_pipe, bender.prompt)
    bender.flush()
    rec.flush()
    assert np.array_equal(x, np.array(alone))
    assert [s.step_idx for s in rec.steps] == list(range(RUN["num_steps"]))
    assert len(bender.records) == RUN["num_steps"] * len(tiny_pipe.unet.hooks.sites)
    assert not tiny_pipe.unet.hooks.processors
