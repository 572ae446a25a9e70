"""Measured effects (issue 6): each technique does what it says, on the toy model.

Every test compares a technique's images with the baseline of the same prompt
and seed (seed 0, one batch of 8 images, ``effects.STEPS`` = 12 steps, cfg 5)
and asserts the intended effect as a number (``effects.STATISTICS``), with a
margin a broken technique fails. ``tools/measure_effects.py`` re-measures
every statistic over seeds, and with ``--kernels`` over BLAS kernels.

The table below (TABLE in the tests' comments) was measured on the committed model
(run 7) with seeds 0 and 1 under the default kernel (OpenBLAS's own choice,
SkylakeX here) and seed 0, the tests' seed, under forced OpenBLAS kernels and
under MLX's bundled BLAS (nothing preloaded; the values come from these tests
run with ``$PULSE_EFFECTS_LOG``). The kernels change the low bits only: no
statistic moved in its third decimal. Each threshold is below the worst case
measured: shifts and gains by about half of it or more, shares by at least
0.09; the bit-identity test stays exact.

Columns: s0, s1 = seeds 0 and 1 under the default kernel; Has, Neh, Pre, Sky
= seed 0 with OPENBLAS_CORETYPE=Haswell, Nehalem, Prescott, SkylakeX; bun =
seed 0 under MLX's bundled BLAS. Sandybridge was started too but ran over
four times slower than the others on this CPU and did not finish in the time
there was. "worst" is the value nearest its threshold.

| statistic | s0 | s1 | Has | Neh | Pre | Sky | bun | worst | threshold |
|---|---|---|---|---|---|---|---|---|---|
| injection shift | +1.711 | +1.685 | +1.711 | +1.711 | +1.711 | +1.711 | +1.711 | +1.685 | > 0.88 |
| injection moved | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | >= 0.75 |
| injection blueness | +0.785 | +0.755 | +0.785 | +0.785 | +0.785 | +0.785 | +0.785 | +0.755 | > 0.4 |
| injection empty window identical | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | == 1 |
| injection mid / all | +0.000 | +0.000 | +0.000 | +0.000 | +0.000 | +0.000 | +0.000 | +0.000 | < 0.5 |
| regional left blue shift, everywhere | +0.132 | +0.138 | +0.132 | +0.132 | +0.132 | +0.132 | +0.132 | +0.132 | > 0.06 |
| regional right green shift, everywhere | +0.590 | +0.594 | +0.590 | +0.590 | +0.590 | +0.590 | +0.590 | +0.590 | > 0.28 |
| regional left / everywhere, left blue | +1.874 | +1.729 | +1.874 | +1.874 | +1.874 | +1.874 | +1.874 | +1.729 | > 0.8 |
| regional left / everywhere, right green | -0.003 | +0.011 | -0.003 | -0.003 | -0.003 | -0.003 | -0.003 | +0.011 | < 0.25 |
| single: left blueness shift | +1.779 | +1.745 | +1.779 | +1.779 | +1.779 | +1.779 | +1.779 | +1.745 | > 0.9 |
| single: right share rise | +0.073 | +0.067 |  |  |  |  |  | +0.067 | (not asserted) |
| single, red masked right: left blueness shift | +1.740 | +1.718 | +1.740 | +1.740 | +1.740 | +1.740 | +1.740 | +1.718 | > 0.9 |
| single, red masked right: right share change, abs | +0.007 | +0.000 | +0.007 | +0.007 | +0.007 | +0.007 | +0.007 | +0.007 | < 0.05 |
| masked shift | -0.783 | -0.758 | -0.783 | -0.783 | -0.783 | -0.783 | -0.783 | -0.758 | < -0.4 |
| masked moved | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | >= 0.75 |
| x0.3 shift | -0.128 | -0.137 | -0.128 | -0.128 | -0.128 | -0.128 | -0.128 | -0.128 | < -0.055 |
| x0.3 moved | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | >= 0.75 |
| x3 shift | +0.059 | +0.066 | +0.059 | +0.059 | +0.059 | +0.059 | +0.059 | +0.059 | > 0.024 |
| x3 moved | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | +1.000 | >= 0.75 |
| translate x gain | +0.488 | +0.490 | +0.488 | +0.488 | +0.488 | +0.488 | +0.488 | +0.488 | > 0.25 |
| translate share right | +0.929 | +0.927 | +0.929 | +0.929 | +0.929 | +0.929 | +0.929 | +0.927 | > 0.8 |
| flip x gain | +0.233 | +0.242 | +0.233 | +0.233 | +0.233 | +0.233 | +0.233 | +0.233 | > 0.1 |
| flip share right | +0.455 | +0.457 | +0.455 | +0.455 | +0.455 | +0.455 | +0.455 | +0.455 | > 0.2 |
| regional_mask right gain | +0.408 | +0.192 | +0.408 | +0.408 | +0.408 | +0.408 | +0.408 | +0.192 | > 0.08 |
| regional_mask right share | +0.749 | +0.858 | +0.749 | +0.749 | +0.749 | +0.749 | +0.749 | +0.749 | > 0.65 |
| regional_mask left gain | +0.238 | +0.515 | +0.238 | +0.238 | +0.238 | +0.238 | +0.238 | +0.238 | > 0.08 |
| regional_mask left share | +0.897 | +0.849 | +0.897 | +0.897 | +0.897 | +0.897 | +0.897 | +0.849 | > 0.65 |
| capture circle on/off | +1.819 | +1.885 | +1.819 | +1.819 | +1.819 | +1.819 | +1.819 | +1.819 | > 1.4 |

``blueness`` = score(blue) - score(red) of the drawn pixels, where
score(c) is the colour's channel contrast (B - (R + G) / 2 for blue):
about -1.1 for the palette's red, +1.1 for its blue.
``$PULSE_TOY_MODEL`` points the tests at another model folder.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pulse_plugin.toy import effects as E

N = 8
SEED = 0

pytestmark = pytest.mark.skipif(
    not (E.model_path() / "unet").is_dir(),
    reason=f"no toy model at {E.model_path()} (not committed yet)",
)


@pytest.fixture(scope="module")
def runs(sd):
    return E.Runs(E.load_toy(sd_module=sd), N, SEED, E.STEPS)


def mean(values) -> float:
    return E.summary(values)[0]


def stat(name: str, out) -> float:
    """The statistic tools/measure_effects.py measures under the same name.

    With ``$PULSE_EFFECTS_LOG`` set, each value is also appended there (one
    JSON object a line), so a run under another BLAS records what it saw.
    """
    value = E.statistic(name, out)
    log = os.environ.get("PULSE_EFFECTS_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"statistic": name, "value": value}) + "\n")
    return value


def assert_moves(out, name: str, by: float) -> None:
    """'{name} shift' beyond by (its sign is the direction), in most images too."""
    assert np.sign(by) * stat(f"{name} shift", out) > abs(by)
    assert stat(f"{name} moved", out) >= 0.75  # not one outlier


# ------------------------------------------------------------------ injection


@pytest.fixture(scope="module")
def injection(runs):
    return E.injection(runs)


def test_injection_turns_the_object_blue(injection):
    # "a red circle on the left" with "a blue circle on the left" injected into
    # every cross-attention site: blueness shift (TABLE: injection shift).
    assert_moves(injection, "injection", 0.88)
    assert stat("injection blueness", injection) > 0.4  # blue, not just less red


def test_injection_empty_window_is_bit_identical(injection):
    # a sigma window below every visited sigma never fires: np.array_equal
    assert stat("injection empty window identical", injection) == 1.0


def test_injection_into_one_block_is_weaker_than_all(injection):
    # mid.0.0 only vs all 6 sites (TABLE: injection mid / all). On the earlier
    # run-1 model "detail" (the level-0 sites) gave a larger shift than all
    # sites, so "fewer blocks, smaller effect" is not a law; it holds for mid.
    assert stat("injection mid / all", injection) < 0.5


# ------------------------------------------------------------------ regional


def test_regional_injection_acts_in_its_region(runs):
    # "a yellow circle on the left and a red square on the right" with "a blue
    # circle on the left and a green square on the right" injected into every
    # site, everywhere vs in the left half only: the left half's blue score
    # and the right half's green score (TABLE: regional ...). The region gets
    # the whole effect; little of it leaks across: the square stays red.
    r = E.regional(runs)
    assert stat("regional left blue shift, everywhere", r) > 0.06
    assert stat("regional right green shift, everywhere", r) > 0.28
    assert stat("regional left / everywhere, left blue", r) > 0.8
    assert stat("regional left / everywhere, right green", r) < 0.25


@pytest.fixture(scope="module")
def regional_single(runs):
    return E.regional_single(runs)


def test_regional_injection_on_one_object_recolours_it(regional_single):
    # "a blue circle on the left" into the left half of "a red circle on the
    # left": the left half's blueness (TABLE: single: left blueness shift).
    assert stat("single: left blueness shift", regional_single) > 0.9


def test_regional_injection_with_the_old_colour_masked_outside(regional_single):
    # Without more, the right half (mask 0) gains a second, yellowish object
    # (TABLE: single: right share rise): the base prompt's "red" still acts
    # there, and this model's colour word acts through the whole image. With
    # "red" masked in the right half as well, the left turns blue and the
    # right half's share of drawn pixels stays within 0.05 of the baseline's.
    r = regional_single
    assert stat("single, red masked right: left blueness shift", r) > 0.9
    assert stat("single, red masked right: right share change, abs", r) < 0.05


# ------------------------------------------------------------------ tokens


@pytest.fixture(scope="module")
def token_weights(runs):
    return E.token_weights(runs)


def test_masking_the_colour_word_removes_the_colour(token_weights):
    # "a blue circle on the left" with "blue" masked: blue score (TABLE:
    # masked shift); every object comes out red, the model's colour for
    # captions that name none ("a circle on the left").
    assert_moves(token_weights, "masked", -0.4)


def test_down_weighting_the_colour_word_weakens_it(token_weights):
    # "blue" x0.3 (TABLE: x0.3 shift)
    assert_moves(token_weights, "x0.3", -0.055)


def test_up_weighting_the_colour_word_strengthens_it(token_weights):
    # "blue" x3 (TABLE: x3 shift); the drawn blue is already near the
    # palette's (+0.67), so the gain is small but steady. A re-weighting that
    # did nothing would give exactly 0.
    assert_moves(token_weights, "x3", 0.024)


# ------------------------------------------------------------------ bending


@pytest.fixture(scope="module")
def bending(runs):
    return E.bending(runs)


def test_bending_translate_moves_the_object_right(bending):
    # the maps of "red", "circle" and "left" in "a red circle on the left"
    # shifted right by half the width: the object's centroid x and its share
    # of drawn pixels in the right half (TABLE: translate ...); some objects
    # change colour on the way.
    assert stat("translate x gain", bending) > 0.25
    assert stat("translate share right", bending) > 0.8


def test_bending_flip_moves_the_centroid_to_the_other_side(bending):
    # the same maps mirrored left-right (TABLE: flip ...). Most images keep
    # the object on the left and gain a second blob on the right: flip moves
    # the centroid, not the whole object.
    assert stat("flip x gain", bending) > 0.1
    assert stat("flip share right", bending) > 0.2


@pytest.mark.parametrize("side", ["right", "left"])
def test_bending_regional_mask_confines_the_object(bending, side):
    # "a red circle" (no position word: drawn left or right) with the maps of
    # "red" and "circle" kept in one half: the share of drawn pixels in that
    # half, its gain over the unbent run (TABLE: regional_mask ...)
    assert stat(f"regional_mask {side} gain", bending) > 0.08
    assert stat(f"regional_mask {side} share", bending) > 0.65


# ------------------------------------------------------------------ capture


def test_capture_map_of_the_shape_word_peaks_on_the_object(runs):
    # the recorded map's mean on the drawn pixels / off them, "a red circle on
    # the left", 4 images (TABLE: capture circle on/off). Not asserted: the
    # maps of "red" and "left", which do not peak on the object on this model
    # (its colour and position words act through the whole image).
    assert stat("capture circle on/off", E.capture(runs)) > 1.4


# ------------------------------------------------------------------ LoRA


def test_recolouring_lora_and_its_half_blend(runs, tmp_path):
    # A rank-4 attention LoRA, 100 steps at lr 2e-3 on 24 blue circles
    # captioned "a red circle <position>" (effects.train_recolour_lora; the
    # earlier 40 steps at lr 3e-3 shifted it by +0.1 to +1.5 by seed and
    # machine, and lr 5e-3 or 1e-2 swing more). Blueness of "a red circle on the left":
    # baseline -0.94; the shift at weight 1, and the half blend's share of
    # it, with training and sampling seed s under forced OpenBLAS kernels and
    # MLX's bundled BLAS (`tools/measure_lora.py --seeds 4`; SkylakeX is this
    # machine's own choice; the test runs seed 0). Run-6 model:
    #
    # | seed | Haswell | Nehalem | Prescott | SkylakeX | bundled |
    # |---|---|---|---|---|---|
    # | 0 | +1.69 0.58 | +1.69 0.57 | +1.69 0.57 | +1.67 0.58 | +1.68 0.58 |
    # | 1 | +1.80 0.43 | +1.79 0.43 | +1.79 0.43 | +1.77 0.44 | +1.77 0.43 |
    # | 2 | +1.74 0.60 | +1.75 0.61 | +1.75 0.61 | +1.77 0.61 | +1.80 0.61 |
    # | 3 | +1.87 0.77 | +1.87 0.76 | +1.87 0.76 | +1.87 0.76 | +1.86 0.76 |
    #
    # Run-7 model (branch toy's retrained one, 32 groups), the same way:
    #
    # | seed | Haswell | Nehalem | Prescott | SkylakeX | bundled |
    # |---|---|---|---|---|---|
    # | 0 | +1.81 0.69 | +1.80 0.70 | +1.80 0.69 | +1.82 0.70 | +1.80 0.69 |
    # | 1 | +1.70 0.47 | +1.72 0.46 | +1.71 0.45 | +1.72 0.46 | +1.69 0.44 |
    # | 2 | +1.81 0.77 | +1.82 0.76 | +1.83 0.77 | +1.82 0.76 | +1.83 0.77 |
    # | 3 | +1.80 0.81 | +1.81 0.79 | +1.83 0.77 | +1.81 0.79 | +1.82 0.80 |
    #
    # Worst cases: shift +1.67, weight 1 +0.74 (least blue image +0.60),
    # share 0.43 to 0.81. Thresholds: shift 1.2 (and 6 of 8 images), weight
    # 1 above 0.4, share between 0.2 and 0.95.
    result = E.train_recolour_lora(runs.pipe, tmp_path / "recolour.safetensors")
    r = E.lora(runs, result.path)
    base, half, full = (mean(r[k]) for k in ("baseline", "weight 0.5", "weight 1"))
    assert_moves(r, "lora", 1.2)
    assert stat("lora blueness", r) > 0.4  # blue, not just less red
    assert base < half < full  # toward blue as the weight grows
    assert 0.2 < stat("lora half-blend share", r) < 0.95
