"""The committed toy model: small, loads offline, and draws what the caption says."""

import json
import os

import pytest

from pulse_plugin import models
from pulse_plugin.toy import default_model_path, quality

MODEL = default_model_path()
pytestmark = pytest.mark.skipif(
    not models.is_model_folder(MODEL), reason="toy model not built"
)


def test_fixture_is_small():
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size <= 20 * 1024 * 1024


# Issue 6's bar: colour >= 90%, position >= 80% on held-out captions. The
# committed model (run 7) measured, on this test's set (8 held-out captions x
# 4 samples, seed 0, 20 Euler steps, CFG 5), colour 29/32 and position 32/32
# under the Haswell, Nehalem, Prescott and SkylakeX OpenBLAS kernels and under
# MLX's bundled BLAS alike (run 6: 30/32 and 32/32). The bar itself is the
# threshold: one more miss of colour would fail it. Two-object captions (not
# part of the bar): both objects right in 6/16 under every kernel measured
# (run 6: 15/16; the 800-step fine-tune to 32 groups lost most of it).


def record(name: str, result) -> None:
    """Append the result to $PULSE_EFFECTS_LOG when set (as tests/test_effects.py does)."""
    log = os.environ.get("PULSE_EFFECTS_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"statistic": name, "value": result.summary()}) + "\n")


@pytest.fixture(scope="module")
def pipe(sd):
    return models.load_pipeline(MODEL, sd)


def test_quality_bar_on_held_out_captions(pipe):
    size = models.latent_size(pipe, folder=MODEL)
    result = quality.measure(
        pipe, per_caption=4, seed=0, num_steps=20, cfg_weight=5.0, latent_size=size
    )
    record("quality held-out", result)
    assert result.samples == 32
    assert result.colour_rate >= quality.COLOUR_BAR, result.summary()
    assert result.position_rate >= quality.POSITION_BAR, result.summary()


def test_two_object_captions(pipe):
    # a regression floor, not a bar: 6/16 measured under every kernel (see
    # above), two samples of margin; chance is far below 1/4
    result = quality.measure_two_objects(pipe, per_caption=4, seed=0)
    record("quality two objects", result)
    assert result.samples == 16
    assert result.position_rate >= 0.25, result.summary()
