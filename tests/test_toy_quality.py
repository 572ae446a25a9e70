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
# committed model (run 6) measured colour 123/128 = 96.1% and position
# 128/128 = 100% with tools/measure_toy_quality.py (16 samples per caption);
# on this test's smaller set (8 held-out captions x 4 samples, seed 0, 20
# Euler steps, CFG 5) colour 30/32 and position 32/32. Two-object captions
# (not part of the bar): 15/16 samples with both objects right.


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
    # a regression floor, not a bar: 15/16 measured, chance is far below 1/4
    result = quality.measure_two_objects(pipe, per_caption=4, seed=0)
    record("quality two objects", result)
    assert result.samples == 16
    assert result.position_rate >= 0.75, result.summary()
