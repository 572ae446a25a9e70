"""The memory estimate bounds what a generation really allocates, and refuses what won't fit."""

import mlx.core as mx
import pytest

from pulse_plugin import memory
from pulse_plugin.sampling import decode, final_latents


def measured(pipe, latent, cfg=7.5):
    """Peak bytes MLX allocates for one step and the decode, beyond what was held before."""
    mx.eval(pipe.unet.parameters())
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    x = final_latents(
        pipe, "a red circle", num_steps=1, cfg_weight=cfg, latent_size=latent, seed=0
    )
    unet = mx.get_peak_memory() - base
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    decode(pipe, x)
    return unet, mx.get_peak_memory() - base


@pytest.mark.parametrize("latent", [(8, 8), (32, 32), (16, 32)])
@pytest.mark.parametrize("which", ["tiny_pipe", "tiny_xl", "plain_pipe"])
def test_the_estimate_bounds_the_measured_peak(request, which, latent):
    pipe = request.getfixturevalue(which)
    unet, dec = measured(pipe, latent)
    est_unet = memory.unet_bytes(pipe, latent, 2)
    est_dec = memory.decoder_bytes(pipe, latent, 1)
    assert unet <= est_unet and dec <= est_dec
    if mx.default_device().type == mx.DeviceType.cpu:  # scores materialised: tight
        assert est_unet <= 10 * unet and est_dec <= 10 * dec
    assert memory.estimate(pipe, latent) == max(est_unet, est_dec)


def test_the_attention_term_grows_with_the_fourth_power_of_the_side(tiny_pipe):
    small, big = (memory.estimate(tiny_pipe, (s, s)) for s in (256, 512))
    assert 15 < big / small <= 16


def test_a_generation_that_will_not_fit_is_refused_before_it_starts(tiny_pipe):
    need = memory.estimate(tiny_pipe, (64, 64))
    assert memory.check_fits(tiny_pipe, (64, 64), free=need) == need
    with pytest.raises(memory.NotEnoughMemory) as err:
        memory.check_fits(tiny_pipe, (64, 64), free=need // 2)
    message = str(err.value)
    assert memory.gib(need) in message and memory.gib(need // 2) in message
    assert "latent size (64, 64)" in message
    free = memory.available()
    assert free is None or free > 0
