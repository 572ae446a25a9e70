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


def test_quality_bar_on_held_out_captions(sd):
    pipe = folder.load_pipeline(MODEL, sd)
    size = folder.latent_size(pipe, folder=MODEL)
    result = quality.measure(
        pipe, per_caption=4, seed=0, num_steps=20, cfg_weight=5.0, latent_size=size
    )
    assert result.samples == 32
    assert result.colour_rate >= quality.COLOUR_BAR, result.summary()
    assert result.position_rate >= quality.POSITION_BAR, result.summary()
