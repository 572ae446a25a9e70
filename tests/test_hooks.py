"""The seam is really called, with the right metadata, and its registry behaves."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_plugin import tiny

PROMPT = "a red circle on the left"


def _record(pipe, kinds=("self", "cross")):
    calls = []
    hooks = pipe.unet.hooks
    hooks.enabled = True
    for site in hooks.sites:
        for kind in kinds:

            def proc(attn, x, memory, mask, meta, _kind=kind):
                calls.append((meta, x.shape, np.array(memory)))
                return attn(x, memory, memory, mask)

            hooks.register(site, kind, proc)
    return calls


def _expected_shape(block_id, latent=16):
    part, block = block_id.split(".")[:2]
    level = {"down": int(block), "mid": 1, "up": 1 - int(block)}[part]
    return (latent >> level, latent >> level)


@pytest.mark.parametrize("cfg", [7.5, 0.0])
def test_every_site_called_once_per_unet_call_with_right_meta(tiny_pipe, cfg):
    pipe = tiny_pipe
    calls = _record(pipe)
    steps = []
    pipe.unet.hooks.observers.append(steps.append)
    list(
        pipe.generate_latents(
            PROMPT, num_steps=3, cfg_weight=cfg, latent_size=(16, 16), seed=1
        )
    )

    sites = pipe.unet.hooks.sites
    # down: 2 blocks x 1 attention, mid: 1, up: 2 blocks x 2 attentions
    assert len(sites) == 2 + 1 + 4
    per_call = [(s, k) for s in sites for k in ("self", "cross")]
    assert len(calls) == 3 * len(per_call)
    timesteps = pipe.sampler.timesteps(3, start_time=pipe.sampler.max_time)
    conditioning = np.array(pipe._get_text_conditioning(PROMPT, 1, cfg, ""))
    for i, (meta, shape, memory) in enumerate(calls):
        step, j = divmod(i, len(per_call))
        assert (meta.block_id, meta.kind) == per_call[j]
        assert meta.step_idx == step
        t = timesteps[step][0]
        assert meta.timestep == t.item()
        assert meta.sigma == pipe.sampler.sigmas(t).item()
        assert isinstance(meta.sigma, float)
        assert meta.spatial_shape == _expected_shape(meta.block_id)
        batch = 2 if cfg > 1 else 1
        assert (
            shape[0] == batch
            and shape[1] == meta.spatial_shape[0] * meta.spatial_shape[1]
        )
        assert meta.cond_rows == slice(0, 1)
        assert meta.uncond_rows == (slice(1, 2) if cfg > 1 else None)
        if meta.kind == "cross":  # upstream's batch order: [prompt, negative prompt]
            assert np.array_equal(memory, conditioning)
    assert [s.step_idx for s in steps] == [0, 1, 2]
    assert [s.sigma for s in steps] == sorted({s.sigma for s in steps}, reverse=True)
    assert all(s.cfg == (cfg > 1) for s in steps)


def test_site_names_of_sd21_and_sdxl_layouts(sd):
    """SD 2.1: attention in down 0-2 and up 1-3 (16 sites); SDXL: deeper stacks."""

    cfg = sd.config.UNetConfig()
    cfg.block_out_channels = (32, 32, 32, 32)
    cfg.num_attention_heads = (1, 1, 1, 1)
    cfg.norm_num_groups = 8
    cfg.cross_attention_dim = (8,) * 4
    cfg.up_block_types = cfg.up_block_types[::-1]  # as upstream's loader does
    sites = sd.unet.UNetModel(cfg).hooks.sites
    assert len(sites) == 16
    assert sites[:6] == [
        "down.0.0.0",
        "down.0.1.0",
        "down.1.0.0",
        "down.1.1.0",
        "down.2.0.0",
        "down.2.1.0",
    ]
    assert sites[6] == "mid.0.0"
    assert (
        sites[7:10] == ["up.1.0.0", "up.1.1.0", "up.1.2.0"] and sites[-1] == "up.3.2.0"
    )

    xl = sd.config.UNetConfig(
        block_out_channels=(32, 32, 32),
        layers_per_block=(2, 2, 2),
        transformer_layers_per_block=(1, 2, 3),
        num_attention_heads=(1, 1, 1),
        cross_attention_dim=(8,) * 3,
        norm_num_groups=8,
        down_block_types=(
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    sites = sd.unet.UNetModel(xl).hooks.sites
    assert "down.0.0.0" not in sites and "down.2.1.2" in sites and "mid.0.2" in sites
    assert len(sites) == 2 * 2 + 2 * 3 + 3 + 3 * 3 + 3 * 2


def test_img2img_steps_count_from_zero_and_start_part_way(tiny_pipe):
    pipe = tiny_pipe
    pipe.unet.hooks.enabled = True
    seen = []
    pipe.unet.hooks.observers.append(seen.append)
    image = mx.zeros((32, 32, 3))
    list(
        pipe.generate_latents_from_image(
            image, PROMPT, strength=0.5, num_steps=6, seed=3
        )
    )
    assert [s.step_idx for s in seen] == [0, 1, 2]
    assert seen[0].timestep == pytest.approx(pipe.sampler.max_time * 0.5)
    assert seen[0].sigma < pipe.sampler.sigmas(mx.array(999.0)).item()


def test_nothing_is_called_while_off(tiny_pipe):
    pipe = tiny_pipe
    calls = _record(pipe)
    seen = []
    pipe.unet.hooks.observers.append(seen.append)
    pipe.unet.hooks.enabled = False
    list(pipe.generate_latents(PROMPT, num_steps=2, latent_size=(16, 16), seed=1))
    assert calls == [] and seen == [] and pipe.unet.hooks.step is None


def test_processor_output_is_used(tiny_pipe):
    pipe = tiny_pipe
    base = np.array(
        list(pipe.generate_latents(PROMPT, num_steps=2, latent_size=(16, 16), seed=1))[
            -1
        ]
    )
    pipe.unet.hooks.enabled = True
    pipe.unet.hooks.register(
        "mid.0.0", "cross", lambda attn, x, m, mask, meta: mx.zeros_like(x)
    )
    got = np.array(
        list(pipe.generate_latents(PROMPT, num_steps=2, latent_size=(16, 16), seed=1))[
            -1
        ]
    )
    assert not np.array_equal(base, got)


def test_registry_errors_name_the_problem(tiny_pipe):
    hooks = tiny_pipe.unet.hooks
    with pytest.raises(ValueError, match="Unknown block id 'down.9.0.0'"):
        hooks.register("down.9.0.0", "cross", print)
    with pytest.raises(ValueError, match="Unknown attention kind 'both'"):
        hooks.register("mid.0.0", "both", print)
    hooks.register("mid.0.0", "self", print)
    with pytest.raises(ValueError, match="is set for mid.0.0"):
        hooks.register("mid.0.0", "self", print)


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["register", "clear"]), st.integers(0, 11)),
        max_size=25,
    )
)
def test_registry_matches_a_model_dict(ops, sd):
    unet = _SHARED.get("unet")
    if unet is None:
        unet = _SHARED["unet"] = tiny.build_pipeline(sd, tiny.TinyConfig()).unet
    hooks = unet.hooks
    hooks.clear()
    keys = [(s, k) for s in hooks.sites for k in ("self", "cross")]
    model = {}
    for op, i in ops:
        key = keys[i % len(keys)]
        if op == "clear":
            hooks.clear()
            model.clear()
        elif key in model:
            with pytest.raises(ValueError):
                hooks.register(*key, print)
        else:
            hooks.register(*key, print)
            model[key] = print
        assert hooks.processors == model
        assert hooks.enabled is False


_SHARED = {}


@settings(max_examples=8, deadline=None)
@given(steps=st.integers(1, 6), strength=st.floats(0.2, 1.0))
def test_observed_sigmas_decrease_and_match_the_schedule(steps, strength, sd):
    pipe = _SHARED.get("pipe")
    if pipe is None:
        pipe = _SHARED["pipe"] = tiny.build_pipeline(
            sd, tiny.TinyConfig(channels=(32, 32), text_dims=16)
        )
    hooks = pipe.unet.hooks
    hooks.clear()
    hooks.enabled = True
    seen = []
    hooks.observers.append(seen.append)
    start = pipe.sampler.max_time * strength
    n = int(steps * strength)
    if n < 1:
        return
    x = mx.zeros((1, 8, 8, 4))
    cond = pipe._get_text_conditioning(PROMPT, 1, 7.5, "")
    for _ in pipe._denoising_loop(x, start, cond, n, 7.5):
        pass
    sigmas = [s.sigma for s in seen]
    assert [s.step_idx for s in seen] == list(range(n))
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    planned = [
        pipe.sampler.sigmas(t).item()
        for t, _ in pipe.sampler.timesteps(n, start_time=start)
    ]
    assert sigmas == planned
