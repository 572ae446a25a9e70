"""Perturbed-attention guidance: identity self-attention, the guidance formula, parity when off."""

import mlx.core as mx
import numpy as np
import pytest
from test_pulse_support import PROMPT, Recorder, generate

from pulse_plugin.capture.recorder import Recorder as CaptureRecorder
from pulse_plugin.pulse import Pulse
from pulse_plugin.techniques.perturbed_attention import guided_eps, identity_attention


def _pipe(which, pipe, xl):
    return pipe if which == "sd" else xl


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_scale_zero_and_a_missed_window_are_upstreams_step(pipe, xl, which):
    p = _pipe(which, pipe, xl)
    plain = generate(p, steps=3)
    with Pulse(p) as pulse:
        pulse.perturbed_attention(0.0)
        zero = generate(p, steps=3)
    with pytest.warns(UserWarning, match="PerturbedAttention"):
        with Pulse(p) as pulse:
            pulse.perturbed_attention(3.0, sigma_start=1e-6, sigma_end=0.0)
            missed = generate(p, steps=3)
    assert np.array_equal(zero, plain) and np.array_equal(missed, plain)
    assert "_denoising_step" not in vars(p)


def test_perturbed_sites_output_the_value_projection(pipe):
    rec = Recorder()
    with Pulse(pipe) as pulse:
        pulse.add_link("mid", "self", rec)  # before the perturbation in the chain
        pulse.perturbed_attention(2.0, block="mid")
        generate(pipe, steps=1)
    calls = [r for r in rec.records if r["call"].guidance_pass == "perturbed"]
    main = [r for r in rec.records if r["call"].guidance_pass == "main"]
    assert len(calls) == len(main) > 0
    for r in calls:
        expected = identity_attention(r["call"].attn, r["x"])
        assert np.array_equal(np.array(r["out"]), np.array(expected))
        assert len(r["x"]) == 1 and r["call"].meta.uncond_rows is None
    for r in main:
        assert len(r["x"]) == 2  # the guidance batch itself is not perturbed


def _unet_eps(p, x, t, cond, text_time=None):
    return p.unet(x, mx.broadcast_to(t, [len(x)]), encoder_x=cond, text_time=text_time)


@pytest.mark.parametrize("cfg", [3.0, 1.0])
def test_one_step_is_the_guidance_formula(pipe, cfg):
    """The first step, recomputed through the raw seam: upstream's UNet calls and sampler."""
    steps, scale, seed = 2, 2.5, 11
    with Pulse(pipe) as pulse:
        pulse.perturbed_attention(scale, block="mid")
        x1 = next(
            pipe.generate_latents(
                PROMPT, num_steps=steps, cfg_weight=cfg, latent_size=(8, 8), seed=seed
            )
        )
    mx.random.seed(seed)
    cond = pipe._get_text_conditioning(PROMPT, 1, cfg, "")
    x_T = pipe.sampler.sample_prior((1, 8, 8, 4), dtype=pipe.dtype)
    t, t_prev = next(
        iter(pipe.sampler.timesteps(steps, start_time=pipe.sampler.max_time))
    )
    x_in = mx.concatenate([x_T] * 2) if cfg > 1 else x_T
    eps = _unet_eps(pipe, x_in, t, cond)
    eps_c, eps_u = eps.split(2) if cfg > 1 else (eps, None)
    hooks = pipe.unet.hooks
    sites = [b for b in hooks.sites if b.startswith("mid")]
    try:
        hooks.enabled = True
        for b in sites:
            hooks.processors[(b, "self")] = (
                lambda attn, x, m, mask, meta: attn.out_proj(attn.value_proj(x))
            )
        eps_p = _unet_eps(pipe, x_T, t, cond[:1])
    finally:
        hooks.clear()
    expected = pipe.sampler.step(
        guided_eps(eps_c, eps_u, eps_p, cfg, scale), x_T, t, t_prev
    )
    assert np.array_equal(np.array(x1), np.array(expected))


def test_guided_eps():
    c, u, p = mx.array([1.0]), mx.array([0.5]), mx.array([0.8])
    assert guided_eps(c, u, p, 3.0, 2.0).item() == pytest.approx(0.5 + 1.5 + 0.4)
    assert guided_eps(c, None, p, 1.0, 2.0).item() == pytest.approx(1.0 + 0.4)


def test_scale_by_sigma_and_bad_scales(pipe):
    seen = []
    with Pulse(pipe) as pulse:
        pulse.perturbed_attention(lambda sigma: seen.append(sigma) or 1.0)
        generate(pipe, steps=3)
    assert len(seen) == 3 and seen == sorted(seen, reverse=True)
    with Pulse(pipe) as pulse:
        pulse.perturbed_attention(lambda sigma: float("nan"))
        with pytest.raises(ValueError, match="expected a finite number"):
            generate(pipe, steps=1)
    assert "_denoising_step" not in vars(pipe)
    for bad in (float("inf"), "3", True):
        with pytest.raises(ValueError, match="scale"):
            Pulse(pipe).perturbed_attention(bad)
    with Pulse(pipe) as outer:
        outer.perturbed_attention(1.0)
        with pytest.raises(ValueError, match="already active"):
            with Pulse(pipe) as inner:
                inner.perturbed_attention(1.0)
    assert "_denoising_step" not in vars(pipe)


def test_capture_sees_the_main_pass_only(pipe):
    rec = CaptureRecorder(pipe, (8, 8))
    with Pulse(pipe) as pulse:
        pulse.perturbed_attention(2.0)
        rec.attach(pulse)
        generate(pipe, steps=2)
    rec.flush()
    assert [s.calls for s in rec.steps] == [len(pipe.unet.hooks.sites)] * 2
