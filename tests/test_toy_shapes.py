"""The synthetic shapes dataset: deterministic, held-out captions kept out, classifiable."""

import numpy as np

from pulse_plugin.toy import quality, shapes


def test_same_seed_same_dataset():
    a_img, a_cap, _ = shapes.make_dataset(40, seed=3)
    b_img, b_cap, _ = shapes.make_dataset(40, seed=3)
    assert a_cap == b_cap
    assert np.array_equal(a_img, b_img)
    c_img, c_cap, _ = shapes.make_dataset(40, seed=4)
    assert c_cap != a_cap and not np.array_equal(a_img, c_img)


def test_images_are_in_range_and_captions_well_formed():
    images, captions, scenes = shapes.make_dataset(200, seed=0)
    assert images.shape == (200, shapes.SIZE, shapes.SIZE, 3)
    assert images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    assert any(len(s) == 2 for s in scenes) and any(len(s) == 1 for s in scenes)
    for text, scene in zip(captions, scenes):
        assert text == shapes.caption(scene)
        assert set(text.split()) <= set(shapes.WORDS)
        if len(scene) == 2:
            assert (scene[0].position, scene[1].position) in shapes.PAIRS
            assert scene[0].colour != scene[1].colour


def test_held_out_triples_never_drawn_alone_in_training():
    held = {shapes.caption([o]) for o in shapes.held_out_singles()}
    _, captions, scenes = shapes.make_dataset(3000, seed=0)
    singles = {c for c, s in zip(captions, scenes) if len(s) == 1}
    assert not held & singles
    # every colour and every position still appears in training
    assert {o.colour for s in scenes for o in s} == set(shapes.COLOURS)
    assert {o.position for s in scenes for o in s} == set(shapes.POSITIONS)


def test_classifier_reads_ground_truth_images():
    rng = np.random.default_rng(0)
    for obj in shapes.all_singles():
        image = shapes.render([obj], rng)
        det = quality.classify(image)
        assert det.colour == obj.colour, obj
        assert quality.position_ok(obj.position, det.centroid, shapes.SIZE), obj


def test_classifier_on_empty_background():
    image = np.empty((32, 32, 3), np.float32)
    image[:] = shapes.BACKGROUND
    det = quality.classify(image)
    assert det.colour is None and det.centroid is None
    assert not quality.position_ok("left", det.centroid, 32)


def test_partial_phrases_drop_colour_position_or_both():
    obj = shapes.Obj("red", "circle", "left")
    assert obj.phrase() == "a red circle on the left"
    assert obj.partial_phrases() == ["a circle on the left", "a red circle", "a circle"]
