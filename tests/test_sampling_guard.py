"""The generation loop stops on non-finite latents, naming the step and what was active."""

import mlx.core as mx
import numpy as np
import pytest

from pulse_plugin import tiny
from pulse_plugin.pulse import Pulse
from pulse_plugin.sampling import NonFiniteError, decode, final_latents

PROMPT = "a red circle"


def run(pipe, steps=3):
    return final_latents(
        pipe, PROMPT, num_steps=steps, cfg_weight=7.5, latent_size=(8, 8), seed=0
    )


def test_a_finite_run_passes(tiny_pipe):
    x = run(tiny_pipe)
    assert np.isfinite(np.array(x)).all() and np.isfinite(decode(tiny_pipe, x)).all()


def test_nan_in_the_model_stops_at_step_0_with_nothing_active(tiny_pipe):
    w = tiny_pipe.unet.conv_in.weight
    tiny_pipe.unet.conv_in.weight = mx.where(
        mx.arange(w.size).reshape(w.shape) == 0, mx.array(float("nan")), w
    )
    with pytest.raises(NonFiniteError, match="step 0 of 3.*no technique or LoRA"):
        run(tiny_pipe)


def test_an_overflowing_technique_is_named_with_its_step(tiny_pipe):
    with Pulse(tiny_pipe, prompt=PROMPT) as pulse:
        pulse.inject("mid", "a blue square", weight=3e38, steps=(1, None))
        pulse.reweight("red", 2.0, steps=(0, 1))
        with pytest.raises(NonFiniteError) as err:
            run(tiny_pipe)
    message = str(err.value)
    assert "step 1 of 3" in message and "Injection on ['mid.0.0']" in message
    assert "TokenReweight" not in message  # its window ended at step 1


def test_a_broken_autoencoder_is_refused_not_decoded_black(tiny_pipe):
    x = run(tiny_pipe)
    conv = tiny_pipe.autoencoder.decoder.conv_out
    conv.weight = conv.weight * float("nan")
    with pytest.raises(NonFiniteError, match="decoded image is non-finite"):
        decode(tiny_pipe, x)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_steps", 0),
        ("num_steps", 2.5),
        ("cfg_weight", float("nan")),
        ("cfg_weight", float("inf")),
        ("seed", -1),
        ("seed", 2**64),
        ("n_images", 0),
        ("latent_size", (9, 9)),
        ("latent_size", (0, 8)),
    ],
)
def test_loop_arguments_are_checked_before_any_step(tiny_pipe, field, value):
    args = dict(num_steps=2, cfg_weight=7.5, latent_size=(8, 8), seed=0)
    args[field] = value
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        final_latents(tiny_pipe, PROMPT, **args)
