"""Measured effects (issue 6): each technique does what it says, on the toy model.

Every test compares a technique's images with the baseline of the same prompt
and seed (seed 0, one batch of 8 images, ``effects.STEPS`` = 12 steps, cfg 5)
and asserts the intended effect as a number, with a margin a broken technique
fails. The measures live in ``pulse_plugin.toy.effects``;
``tools/measure_effects.py --seeds 4`` re-measures every number quoted here.

The quoted numbers were measured over seeds 0-3 (4 x 8 images) on the interim
toy model (run 1: 800 UNet steps; the committed ``pulse_plugin/toy/model`` had
not landed yet). That model draws the caption's colour but ignores its
position, so the effects that need spatially meaningful attention maps
(bending, capture) did not show: those tests are ``xfail`` with the numbers,
and flip to XPASS on a model where they do. Thresholds are about half the
measured effect; re-measure when the committed model changes.

``blueness`` = score(blue) - score(red) of the drawn pixels, where
score(c) is the colour's channel contrast (B - (R + G) / 2 for blue):
about -1.1 for the palette's red, +1.1 for its blue.
On the committed model (run 5: colour 91.4%, position 61.7% on the quality
bar's samples; seeds 0-1: injection -1.10 -> +1.02, regional left/right
+0.68/+0.18 from -1.21/-1.19, LoRA weight 1 / 0.5: +0.91 / -0.03 from -1.10)
injection, regional injection and LoRA pass with these thresholds; token
masking / up-weighting of the colour word, bending and capture show no effect
(xfail, numbers in the tests).
``$PULSE_TOY_MODEL`` points the tests at another model folder.
"""

from __future__ import annotations

import time

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


# ------------------------------------------------------------------ injection


@pytest.fixture(scope="module")
def injection(runs):
    return E.injection(runs)


def test_injection_turns_the_object_blue(injection):
    # measured: blueness -0.48 baseline -> +0.66 injected into all sites (shift
    # +1.14; per seed +1.47 +0.83 +1.22 +1.03); threshold half the shift
    base, full = injection["baseline"], injection["all blocks"]
    assert mean(full) - mean(base) > 0.55
    assert mean(full) > 0.2  # blue, not just less red
    assert (full > base).mean() >= 0.75  # image by image, not one outlier


def test_injection_empty_window_is_bit_identical(injection):
    # a sigma window below every visited sigma never fires: np.array_equal (4/4 seeds)
    assert injection["empty window identical"][0] == 1.0


def test_injection_into_one_block_is_weaker_than_all(injection):
    # mid.0.0 only vs all 7 sites: shift +0.15 vs +1.15 (seeds 0-1). But
    # "detail" (the 4 level-0 sites) gives a *larger* shift than all sites on
    # the interim model, +1.37 vs +1.14 (seeds 0-3): "fewer blocks, smaller
    # effect" is not a law; it holds for mid.
    base = mean(injection["baseline"])
    full = mean(injection["all blocks"]) - base
    part = mean(injection[E.PARTIAL_BLOCKS]) - base
    assert part < 0.6 * full


# ------------------------------------------------------------------ regional


def test_regional_injection_is_strongest_in_its_region(runs):
    # "a red square in the centre", "a blue square ..." in the left half:
    # measured shift left +1.32 (-0.26 -> +1.06), right +0.78 (-0.22 -> +0.56):
    # the centred object's right half turns blue too (it is one object; the
    # UNet's convolutions and self-attention carry the colour across), so the
    # assertion is the gap, not "right stays red". Gap per seed 0.61 0.64 0.27 0.44.
    r = E.regional(runs)
    left = mean(r["regional left"]) - mean(r["baseline left"])
    right = mean(r["regional right"]) - mean(r["baseline right"])
    assert left > 0.66
    assert left - right > 0.2
    assert mean(r["regional left"]) - mean(r["regional right"]) > 0.2


# ------------------------------------------------------------------ tokens


@pytest.fixture(scope="module")
def token_weights(runs):
    return E.token_weights(runs)


COLOUR_IN_LATER_TOKENS = (
    "committed toy model (run 4): the colour reaches the UNet through the tokens after "
    "the colour word (CLIP is causal) and red is its default colour, so the colour "
    "word's own attention carries no measurable colour (numbers in the test)"
)


@pytest.mark.xfail(reason=COLOUR_IN_LATER_TOKENS, strict=False)
def test_masking_the_colour_word_removes_the_colour(token_weights):
    # interim model (run 1), seeds 0-3: redness of "a red circle on the left"
    # 0.231 -> 0.095 with "red" masked (drop 0.136; per seed 0.133 0.144 0.130
    # 0.134); threshold half. Committed model (run 4), seed 0: 0.614 -> 0.613;
    # blueness of "a blue circle on the left", seeds 0-3: 0.673 0.676 0.676
    # 0.658 -> 0.679 0.678 0.675 0.652 with "blue" masked.
    base, masked = token_weights["baseline"], token_weights["masked"]
    assert mean(base) - mean(masked) > 0.068
    assert (masked < base).mean() >= 0.75


@pytest.mark.xfail(reason=COLOUR_IN_LATER_TOKENS, strict=False)
def test_up_weighting_the_colour_word_strengthens_it(token_weights):
    # interim model: 0.231 -> 0.388 with "red" x3 (gain 0.157; per seed 0.119
    # 0.193 0.158 0.158). Committed model: blueness with "blue" x3, seeds 0-3:
    # 0.659 0.670 0.675 0.654 (baseline above): no gain.
    base, up = token_weights["baseline"], token_weights["up-weighted x3"]
    assert mean(up) - mean(base) > 0.078
    assert (up > base).mean() >= 0.75


# ------------------------------------------------------------------ bending

# Committed model (run 5), tools/measure_effects.py --seeds 2: "a red circle on the
# left" is drawn on the left (object x 0.224), yet bending the word maps moves
# nothing (x 0.225 translated, 0.224 flipped, 0.224 regional_mask) and the captured
# maps do not peak on the object ("red" on/off 1.11, "circle" 0.96). As with token
# masking, the object's content also reaches the UNet through the later tokens.
NO_SPATIAL = (
    "on the toy model bending one word's map moves nothing measurable and its "
    "captured map does not peak on the object (numbers in the test file)"
)


@pytest.fixture(scope="module")
def bending(runs):
    return E.bending(runs)


@pytest.mark.xfail(reason=NO_SPATIAL, strict=False)
def test_bending_translate_moves_the_colour_right(bending):
    # measured: red R-L +0.001 baseline -> +0.017 translated (spread 0.05);
    # object x 0.524 -> 0.518. The effect asked for: R-L up by at least 0.1.
    gain = mean(bending["translate: red R-L"]) - mean(bending["baseline: red R-L"])
    assert gain > 0.1


@pytest.mark.xfail(reason=NO_SPATIAL, strict=False)
def test_bending_flip_moves_the_colour_to_the_other_side(bending):
    # measured: red R-L +0.001 -> +0.000 flipped; object x unchanged (0.524)
    gain = mean(bending["flip: red R-L"]) - mean(bending["baseline: red R-L"])
    assert gain > 0.1


@pytest.mark.xfail(reason=NO_SPATIAL, strict=False)
def test_bending_regional_mask_confines_the_colour(bending):
    # measured: red R-L +0.001 -> -0.018 with the map kept in the left half
    drop = mean(bending["baseline: red R-L"]) - mean(
        bending["regional_mask left: red R-L"]
    )
    assert drop > 0.1


def test_bends_act_on_the_image(bending):
    # the bends do act (identity would give exactly the baseline's numbers)
    for name in ("translate", "regional_mask left"):
        assert not np.array_equal(
            bending[f"{name}: red R-L"], bending["baseline: red R-L"]
        ), name


# ------------------------------------------------------------------ capture


@pytest.mark.xfail(reason=NO_SPATIAL, strict=False)
def test_capture_map_peaks_where_the_object_is_drawn(runs):
    # measured: the recorded map's mean on the drawn pixels / off them:
    # "circle" 1.12, "red" 0.96 (seeds 0-3, 4 images each): no real peak on
    # the interim model. Asked for: at least 1.5 for both words.
    c = E.capture(runs)
    assert mean(c["circle: on/off object"]) > 1.5
    assert mean(c["red: on/off object"]) > 1.5


# ------------------------------------------------------------------ LoRA


def test_recolouring_lora_and_its_half_blend(runs, tmp_path):
    # a rank-4 attention LoRA, 40 steps on 24 blue circles captioned "a red
    # circle <position>" (about 14 s here). Measured blueness of "a red circle
    # on the left": -0.48 baseline, +0.40 at weight 1 (shift 0.88; per seed
    # 0.89 0.77 0.87 1.00), +0.20 at weight 0.5: 0.77 of the way (0.70-0.85
    # per seed; the response is not linear in the weight).
    start = time.perf_counter()
    result = E.train_recolour_lora(runs.pipe, tmp_path / "recolour.safetensors")
    seconds = time.perf_counter() - start
    assert seconds < 60, f"training took {seconds:.0f} s"
    r = E.lora(runs, result.path)
    base, full, half = (mean(r[k]) for k in ("baseline", "weight 1", "weight 0.5"))
    assert full - base > 0.44
    assert base + 0.15 * (full - base) < half < full - 0.05 * (full - base)
