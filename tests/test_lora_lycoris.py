"""LoHa / LoKr factors rewritten as exact LoRA pairs (pure maths, against numpy's products)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from pulse_plugin.lora import lycoris


def rand(*shape, seed=0):
    return (
        np.random.default_rng(seed + sum(shape))
        .standard_normal(shape)
        .astype(np.float32)
    )


def test_loha_is_the_hadamard_product_of_two_low_rank_products():
    w1a, w1b, w2a, w2b = (
        rand(6, 3),
        rand(3, 10),
        rand(6, 3, seed=1),
        rand(3, 10, seed=1),
    )
    parts = dict(zip(lycoris.LOHA_ROLES, map(mx.array, (w1a, w1b, w2a, w2b))))
    down, up, scale = lycoris.loha("x", parts, alpha=1.5)
    assert scale == 0.5 and down.shape == (9, 10) and up.shape == (6, 9)
    want = (w1a @ w1b) * (w2a @ w2b)
    np.testing.assert_allclose(np.array(up @ down), want, rtol=1e-5, atol=1e-5)
    assert lycoris.loha("x", parts, alpha=None)[2] == 1.0  # alpha = dim when missing


@pytest.mark.parametrize("w1_full", [True, False])
@pytest.mark.parametrize("w2_full", [True, False])
def test_lokr_is_the_kronecker_product(w1_full, w2_full):
    parts, factors = {}, {}
    for side, (m, n) in (("w1", (4, 3)), ("w2", (5, 18))):  # w2 as a flattened 3x3 conv
        if w1_full if side == "w1" else w2_full:
            factors[side] = rand(m, n)
            parts[f"lokr_{side}"] = mx.array(factors[side])
        else:
            a, b = rand(m, 2, seed=2), rand(2, n, seed=3)
            factors[side] = a @ b
            parts[f"lokr_{side}_a"], parts[f"lokr_{side}_b"] = mx.array(a), mx.array(b)
    down, up, scale = lycoris.lokr("x", parts, alpha=1.0)
    want = np.kron(factors["w1"], factors["w2"])
    np.testing.assert_allclose(np.array(up @ down), want, rtol=1e-5, atol=1e-5)
    assert scale == (1.0 if w1_full and w2_full else 0.5)
    conv = parts.get("lokr_w2")
    if conv is not None:  # a 4-D w2 gives the same update as its flattened form
        parts["lokr_w2"] = conv.reshape(5, 2, 3, 3)
        d4, u4, _ = lycoris.lokr("x", parts, alpha=1.0)
        assert np.array_equal(np.array(u4 @ d4), np.array(up @ down))


@pytest.mark.parametrize(
    "parts, message",
    [
        (
            {"hada_w1_a": (4, 2), "hada_w1_b": (2, 3), "hada_w2_a": (4, 2)},
            "without hada_w2_b",
        ),
        (
            {
                "hada_w1_a": (4, 2),
                "hada_w1_b": (2, 3),
                "hada_w2_a": (5, 2),
                "hada_w2_b": (2, 3),
            },
            "do not fit",
        ),
        ({"lokr_w1": (2, 2), "lokr_w2_a": (3, 2)}, "lokr_w2_a and lokr_w2_b"),
        (
            {"lokr_w1": (2, 2), "lokr_w2_a": (3, 2), "lokr_w2_b": (3, 4)},
            "do not multiply",
        ),
    ],
)
def test_factors_that_do_not_form_a_layer_are_named(parts, message):
    fn = lycoris.loha if "hada_w1_a" in parts else lycoris.lokr
    with pytest.raises(lycoris.LycorisError, match=message):
        fn("lora_unet_x", {k: mx.zeros(s) for k, s in parts.items()}, alpha=1.0)
