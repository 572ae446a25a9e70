"""The perceptual colour map and its bar, and the capture gallery that uses them."""

import numpy as np
import pytest
from PIL import Image

from pulse_plugin.colormap import VIRIDIS, colormap, colour_bar, with_colour_bar


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def test_ends_are_the_table_ends_and_values_clip():
    out = colormap(np.array([-1.0, 0.0, 1.0, 2.0]))
    assert out.dtype == np.uint8 and out.shape == (4, 3)
    assert (out[0] == VIRIDIS[0]).all() and (out[1] == VIRIDIS[0]).all()
    assert (out[2] == VIRIDIS[-1]).all() and (out[3] == VIRIDIS[-1]).all()


def test_lightness_rises_monotonically_so_dark_means_little():
    ramp = luminance(colormap(np.linspace(0, 1, 257)))
    assert (np.diff(ramp) > -0.6).all()  # rounding to uint8 only
    assert ramp[-1] - ramp[0] > 150


def test_midpoints_interpolate_between_table_rows():
    n = len(VIRIDIS) - 1
    half = colormap(np.array([0.5 / n]))[0]
    assert np.array_equal(half, np.round((VIRIDIS[0] + VIRIDIS[1]) / 2))


def test_nan_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        colormap(np.array([0.1, np.nan]))


def test_bar_runs_from_the_first_to_the_last_colour():
    bar = np.asarray(colour_bar(120))
    assert bar.shape[1] == 120
    assert np.array_equal(bar[2, 4], VIRIDIS[0])
    assert np.array_equal(bar[2, 115], VIRIDIS[-1])


def test_with_colour_bar_keeps_the_image_on_top():
    img = Image.new("RGB", (130, 40), (10, 20, 30))
    out = with_colour_bar(img)
    assert out.width == 130 and out.height > 40
    assert np.array_equal(np.asarray(out)[:40], np.asarray(img))


def test_gallery_grid_and_frames_carry_the_bar(tiny_pipe, tmp_path):
    from pulse_plugin.capture.gallery import capture_run

    r = capture_run(
        tiny_pipe, "a red circle", tmp_path, num_steps=2, latent_size=(8, 8)
    )
    grid = np.asarray(Image.open(r.folder / "grid.png").convert("RGB"))
    strip = grid[-20:, 4:-4].reshape(-1, 3)
    rows = {tuple(c) for c in strip}
    assert (
        tuple(VIRIDIS[0].astype(int)) in rows and tuple(VIRIDIS[-1].astype(int)) in rows
    )
    frame = np.asarray(Image.open(r.folder / "evolution.gif").convert("RGB"))
    bar = luminance(frame[-20, 4:-4])  # a row of the bar (GIF palette rounds colours)
    assert bar[0] < 40  # dark purple at the low end
    assert bar[-1] - bar[0] > 120 and (np.diff(bar) > -8).all()
