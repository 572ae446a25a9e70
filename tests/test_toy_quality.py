"""The committed toy model: small, loads offline, and draws what the caption says."""

import pytest

from pulse_plugin.toy import default_model_path, folder, quality

MODEL = default_model_path()
pytestmark = pytest.mark.skipif(
    not folder.is_model_folder(MODEL), reason="toy model not built"
)


def test_fixture_is_small():
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size <= 20 * 1024 * 1024


# REGRESSION FLOORS, NOT ISSUE 6'S BAR. The committed model meets the colour
# bar but not the position bar (colour >= 90%, position >= 80%; see
# model/MODEL_CARD.md). On this test's own sample set (8 held-out captions x
# 4 samples, seed 0, 20 Euler steps, CFG 5) it measured colour 29/32 = 90.6%
# and position 22/32 = 68.8%. The floors sit 3-4 samples below that: colour
# 26/32, far above chance (25%), and position 18/32, above chance (about 45%
# over these captions; "centre" needs the middle third). A pipeline that loses
# the text, the autoencoder's colours or the position words fails them.
COLOUR_FLOOR = 0.80
POSITION_FLOOR = 0.56


@pytest.fixture(scope="module")
def held_out_result(sd):
    pipe = folder.load_pipeline(MODEL, sd)
    size = folder.latent_size(pipe, folder=MODEL)
    return quality.measure(
        pipe, per_caption=4, seed=0, num_steps=20, cfg_weight=5.0, latent_size=size
    )


def test_quality_floor_on_held_out_captions(held_out_result):
    result = held_out_result
    assert result.samples == 32
    assert result.colour_rate >= COLOUR_FLOOR, result.summary()
    assert result.position_rate >= POSITION_FLOOR, result.summary()


@pytest.mark.xfail(
    reason="issue 6's position bar is not met yet: see model/MODEL_CARD.md"
)
def test_quality_bar_on_held_out_captions(held_out_result):
    result = held_out_result
    assert result.colour_rate >= quality.COLOUR_BAR, result.summary()
    assert result.position_rate >= quality.POSITION_BAR, result.summary()
