"""Helpers shared by the Pulse and technique tests (tiny pipelines, recorders)."""

import mlx.core as mx
import numpy as np

from pulse_plugin import tiny

SD_CFG = tiny.TinyConfig(
    channels=(32, 32, 64), attention=(True, True, True), transformer_layers=(1, 1, 1)
)
XL_CFG = tiny.TinyConfig(
    sdxl=True,
    channels=(32, 32, 64),
    attention=(False, True, True),
    transformer_layers=(1, 2, 2),
    layers_per_block=2,
)
PROMPT = "a red cat on a blue sea"


def generate(pipe, prompt=PROMPT, steps=2, cfg=3.0, size=(8, 8), seed=3, **kw):
    """Final latents of a short run (cfg > 1: rows are [prompt, negative])."""
    x = None
    for x in pipe.generate_latents(
        prompt, num_steps=steps, cfg_weight=cfg, latent_size=size, seed=seed, **kw
    ):
        mx.eval(x)
    return np.array(x)


class Recorder:
    """A chain link that records each base-branch call's inputs and output."""

    def __init__(self):
        self.records = []

    def __call__(self, call, next):
        out = next(call)
        if call.branch == "base":
            mx.eval(out)
            self.records.append(
                dict(
                    block=call.meta.block_id,
                    step=call.meta.step_idx,
                    call=call,
                    x=call.x,
                    memory=call.memory,
                    out=out,
                )
            )
        return out

    def at(self, block, step=0):
        return [r for r in self.records if r["block"] == block and r["step"] == step][0]


class ProbRecorder:
    """A chain link that records the attention probabilities really computed (base branch)."""

    def __init__(self):
        self.probs = {}

    def __call__(self, call, next):
        if call.branch != "base":
            return next(call)

        def observe(probs, c):
            mx.eval(probs)
            self.probs[(c.meta.block_id, c.meta.step_idx)] = np.array(probs)

        return next(call.with_(observers=call.observers + (observe,)))
