"""Prompt injection and multi-scale presets: exact blend maths through the patched pipeline."""

import mlx.core as mx
import numpy as np
import pytest
from test_pulse_support import PROMPT, Recorder, generate

from pulse_plugin import pulse as pulse_module
from pulse_plugin.pulse import Pulse
from pulse_plugin.techniques import MultiScaleInjector

OTHER = "a large green castle with two dogs on the top"  # longer than PROMPT


def broadcast(e, n):
    return mx.broadcast_to(e, (n,) + e.shape[1:])


@pytest.mark.parametrize("which", ["sd", "xl"])
@pytest.mark.parametrize("weight", [0.7, 1.5])
def test_blend_is_exact_and_touches_only_the_conditional_rows(pipe, xl, which, weight):
    p = pipe if which == "sd" else xl
    site = "mid.0.0"
    pulse = Pulse(p)
    rec = Recorder()
    pulse.add_link("all", "cross", rec)
    pulse.inject(site, OTHER, weight=weight)
    with pulse:
        generate(p, steps=1)
    r = rec.at(site)
    attn, x, mem = r["call"].attn, r["x"], r["memory"]
    n = x.shape[0] // 2
    emb = pulse.embedding(OTHER)
    assert emb.shape[1] != mem.shape[1]  # lengths differ: separate keys/values
    base = attn(x, mem, mem, None)
    injected = attn(x[:n], broadcast(emb, n), broadcast(emb, n), None)
    out = np.array(r["out"])
    assert np.array_equal(out[:n], np.array(base[:n] + weight * (injected - base[:n])))
    assert np.array_equal(out[n:], np.array(base[n:]))
    for other in rec.records:  # every other site: upstream's exact op
        if other["block"] != site:
            a, xo, m = other["call"].attn, other["x"], other["memory"]
            assert np.array_equal(np.array(other["out"]), np.array(a(xo, m, m, None)))


def test_weight_zero_and_windows_outside_the_run_are_bit_identical(pipe):
    base = generate(pipe, steps=3)
    with Pulse(pipe) as pulse:
        pulse.inject("all", OTHER, weight=0.0)
        assert np.array_equal(generate(pipe, steps=3), base)
    with pytest.warns(UserWarning, match="matches no step"):
        with Pulse(pipe) as pulse:
            pulse.inject("all", OTHER, sigma_start=0.01, sigma_end=0.0)
            assert np.array_equal(generate(pipe, steps=3), base)
    with Pulse(pipe) as pulse:
        pulse.inject("all", OTHER, steps=(2, None))
        late = generate(pipe, steps=3)
    assert not np.array_equal(late, base)


def test_weight_is_monotone(pipe):
    site = "mid.0.0"
    outs = []
    for w in (0.0, 0.5, 1.0, 2.0):
        pulse = Pulse(pipe)
        rec = Recorder()
        pulse.add_link(site, "cross", rec)
        pulse.inject(site, OTHER, weight=w)
        with pulse:
            generate(pipe, steps=1)
        outs.append(np.array(rec.at(site)["out"][:1], dtype=np.float64))
    dist = [np.linalg.norm(o - outs[0]) for o in outs]
    assert dist[0] == 0 and dist[1] < dist[2] < dist[3]
    assert np.isclose(dist[3], 2 * dist[2], rtol=1e-4)


def test_corepulse_mode_scales_the_embedding(pipe):
    site = "down.0.0.0"
    pulse = Pulse(pipe)
    rec = Recorder()
    pulse.add_link(site, "cross", rec)
    pulse.inject(site, OTHER, weight=2.0, mode="corepulse")
    with pulse:
        generate(pipe, steps=1)
    r = rec.at(site)
    attn, x, mem = r["call"].attn, r["x"], r["memory"]
    e = broadcast(pulse.embedding(OTHER) * 2.0, 1)
    assert np.array_equal(np.array(r["out"][:1]), np.array(attn(x[:1], e, e, None)))
    assert np.array_equal(np.array(r["out"][1:]), np.array(attn(x, mem, mem, None)[1:]))


def test_embeddings_are_computed_once_per_prompt(pipe, monkeypatch):
    calls = []
    real = pulse_module.encode_prompt
    monkeypatch.setattr(
        pulse_module, "encode_prompt", lambda p, t: (calls.append(t), real(p, t))[1]
    )
    with Pulse(pipe) as pulse:
        pulse.inject("down", OTHER)
        pulse.inject("up", OTHER, weight=0.5)
        pulse.inject("mid", "a dog")
        generate(pipe, steps=2)
    assert calls == [OTHER, "a dog"]


def test_several_injections_and_multiscale_presets(pipe, xl):
    with Pulse(pipe) as pulse:
        ms = MultiScaleInjector(pulse)
        s = ms.add_structure_injection("a castle")
        m = ms.add_midlevel_injection("a house")
        d = ms.add_detail_injection("red brown", weight=0.5)
        assert s.blocks == ("down.2.0.0", "mid.0.0", "up.0.0.0", "up.0.1.0")
        assert m.blocks == ("down.1.0.0", "up.1.0.0", "up.1.1.0")
        assert d.blocks == ("down.0.0.0", "up.2.0.0", "up.2.1.0")
        assert all(
            len(pulse.hooks.processors[(b, "cross")].links) == 1 for b in s.blocks
        )
        out = generate(pipe)
    assert np.isfinite(out).all()
    with Pulse(xl) as pulse:
        ms = MultiScaleInjector(pulse)
        ms.add_hierarchical_injection(structure="a castle", detail="a dog")
        with pytest.raises(ValueError, match="only 2 resolution levels"):
            ms.add_midlevel_injection("a house")
        assert np.isfinite(generate(xl)).all()


def test_bad_arguments_name_the_field(pipe):
    pulse = Pulse(pipe)
    with pytest.raises(ValueError, match="weight"):
        pulse.inject("mid", "a dog", weight=-1)
    with pytest.raises(ValueError, match="mode"):
        pulse.inject("mid", "a dog", mode="swap")
    with pytest.raises(ValueError, match="valid names"):
        pulse.inject("middle:1", "a dog")
    assert PROMPT


def test_rows_all_and_no_cfg(pipe):
    site = "mid.0.0"
    for cfg, rows in [(3.0, "all"), (1.0, "cond")]:
        pulse = Pulse(pipe)
        rec = Recorder()
        pulse.add_link(site, "cross", rec)
        pulse.inject(site, OTHER, weight=0.5, rows=rows)
        with pulse:
            generate(pipe, steps=1, cfg=cfg)
        r = rec.at(site)
        attn, x, mem = r["call"].attn, r["x"], r["memory"]
        b = x.shape[0]
        assert b == (2 if cfg > 1 else 1)
        base = attn(x, mem, mem, None)
        e = broadcast(pulse.embedding(OTHER), b)
        expected = base + 0.5 * (attn(x, e, e, None) - base)
        assert np.array_equal(np.array(r["out"]), np.array(expected))
