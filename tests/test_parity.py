"""Identity parity on whole tiny pipelines: unpatched upstream, patched with the
hooks off, patched with identity processors on every site, and the plugin's
empty chains on every site give bit-identical latents at every step and images."""

import mlx.core as mx
import numpy as np
import pytest

from pulse_plugin import chain, tiny

RUNS = {
    "sd-txt2img": dict(sdxl=False, img2img=False, cfg=7.5),
    "sd-img2img": dict(sdxl=False, img2img=True, cfg=7.5),
    "sdxl-txt2img-cfg": dict(sdxl=True, img2img=False, cfg=5.0),
    "sdxl-img2img": dict(sdxl=True, img2img=True, cfg=0.0),
}


def _identity(attn, x, memory, mask, meta):
    return attn(x, memory, memory, mask)


def _install(pipe, variant):
    hooks = getattr(pipe.unet, "hooks", None)
    if variant in ("plain", "off"):
        return
    hooks.enabled = True
    for site in hooks.sites:
        for kind in ("self", "cross"):
            hooks.register(
                site, kind, _identity if variant == "identity" else chain.SiteChain()
            )


def _generate(module, variant, sdxl, img2img, cfg):
    pipe = tiny.build_pipeline(module, tiny.TinyConfig(sdxl=sdxl))
    _install(pipe, variant)
    prompt, steps = "a red circle on the left", 4
    if img2img:
        rng = np.random.default_rng(0)
        image = rng.uniform(-1, 1, size=(32, 32, 3)).astype(np.float32)
        latents = pipe.generate_latents_from_image(
            mx.array(image),
            prompt,
            strength=0.75,
            num_steps=steps,
            cfg_weight=cfg,
            seed=7,
        )
    else:
        latents = pipe.generate_latents(
            prompt, num_steps=steps, cfg_weight=cfg, latent_size=(16, 16), seed=7
        )
    latents = list(latents)
    return [np.array(x) for x in latents] + [np.array(pipe.decode(latents[-1]))]


@pytest.mark.parametrize("run", list(RUNS))
def test_identity_parity_bit_for_bit(run, plain_sd, sd):
    params = RUNS[run]
    reference = _generate(plain_sd, "plain", **params)
    assert len(reference) >= 3
    for variant in ("off", "identity", "chain"):
        got = _generate(sd, variant, **params)
        assert len(got) == len(reference)
        for i, (a, b) in enumerate(zip(reference, got)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b), f"{run}/{variant}: array {i} differs"


def test_parity_test_detects_a_change(plain_sd, sd):
    """A processor that changes the output by one ulp somewhere is caught."""
    reference = _generate(plain_sd, "plain", **RUNS["sd-txt2img"])
    pipe = tiny.build_pipeline(sd, tiny.TinyConfig())
    pipe.unet.hooks.enabled = True

    def nudge(attn, x, memory, mask, meta):
        return attn(x, memory, memory, mask) * np.float32(1 + 2**-20)

    pipe.unet.hooks.register("mid.0.0", "cross", nudge)
    got = [
        np.array(x)
        for x in pipe.generate_latents(
            "a red circle on the left",
            num_steps=4,
            cfg_weight=7.5,
            latent_size=(16, 16),
            seed=7,
        )
    ]
    assert not np.array_equal(reference[-2], got[-1])
