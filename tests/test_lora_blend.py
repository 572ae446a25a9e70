"""Runtime adapters, blends with weights, blend files and quick previews on tiny models."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from pulse_plugin import lora as L
from pulse_plugin.lora import blend as B
from pulse_plugin.lora import synth


def unet_out(plain_pipe, seed=1):
    k1, k2 = mx.random.split(mx.random.key(seed))
    x = mx.random.normal((2, 8, 8, 4), key=k1)
    cond = mx.random.normal((2, 5, 32), key=k2)
    out = plain_pipe.unet(x, mx.array([500.0, 500.0]), encoder_x=cond)
    mx.eval(out)
    return np.array(out)


def make_lora(plain_pipe, name, seed, kinds=("attn", "ff", "conv", "proj"), std=0.05):
    paths = synth.target_paths(plain_pipe.unet, kinds)
    t = synth.random_tensors(plain_pipe.unet, "unet", paths, rank=4, seed=seed, std=std)
    te = synth.target_paths(plain_pipe.text_encoder, ["attn"])
    t.update(
        synth.random_tensors(
            plain_pipe.text_encoder, "te1", te, rank=2, seed=seed + 100
        )
    )
    return L.from_tensors(t, name=name)


@pytest.fixture()
def files(plain_pipe, tmp_path):
    out = []
    for i, name in enumerate(("ink", "oil")):
        f = L.save_lora(
            make_lora(plain_pipe, name, seed=10 + i, std=0.2),
            tmp_path / f"{name}.safetensors",
        )
        out.append(f)
    return out


def test_runtime_matches_fused_for_a_signed_blend(plain_pipe):
    a, b = make_lora(plain_pipe, "a", 1), make_lora(plain_pipe, "b", 2)
    weights = [0.6, -0.35]
    L.fuse(plain_pipe, [a, b], weights)
    fused = unet_out(plain_pipe)
    L.unfuse(plain_pipe)
    base = unet_out(plain_pipe)
    L.apply(plain_pipe, [a, b], weights)
    runtime = unet_out(plain_pipe)
    assert not np.allclose(runtime, base, atol=1e-3)
    np.testing.assert_allclose(runtime, fused, rtol=1e-4, atol=1e-5)
    L.remove(plain_pipe)


def test_conv_runtime_adapter_matches_fused(plain_pipe):
    lo = make_lora(plain_pipe, "conv", 3, kinds=("conv",))
    L.apply(plain_pipe, lo)
    assert any(isinstance(m, L.LoRAConv2d) for _, m in plain_pipe.unet.named_modules())
    runtime = unet_out(plain_pipe)
    L.remove(plain_pipe)
    L.fuse(plain_pipe, lo)
    fused = unet_out(plain_pipe)
    L.unfuse(plain_pipe)
    np.testing.assert_allclose(runtime, fused, rtol=1e-4, atol=1e-5)


def test_weight_zero_is_identity_and_weights_change_without_reload(plain_pipe):
    a, b = make_lora(plain_pipe, "a", 1), make_lora(plain_pipe, "b", 2)
    base = unet_out(plain_pipe)
    before = {k: np.array(v) for k, v in tree_flatten(plain_pipe.unet.parameters())}
    L.fuse(plain_pipe, [a, b], [0.0, 0.0])
    for k, v in tree_flatten(plain_pipe.unet.parameters()):
        assert np.array_equal(np.array(v), before[k])
    L.unfuse(plain_pipe)
    L.apply(plain_pipe, [a, b], [0.0, 0.0])
    assert np.array_equal(unet_out(plain_pipe), base)
    L.set_weights(plain_pipe, {"a": 1.0})
    only_a = unet_out(plain_pipe)
    assert not np.allclose(only_a, base, atol=1e-3)
    L.set_weights(plain_pipe, {"a": 0.0, "b": 1.0})
    only_b = unet_out(plain_pipe)
    assert not np.allclose(only_b, only_a, atol=1e-3)
    L.set_weights(plain_pipe, {"a": 1.0, "b": 0.0})
    assert np.array_equal(unet_out(plain_pipe), only_a)
    assert L.active(plain_pipe) == {"a": 1.0, "b": 0.0}
    with pytest.raises(L.LoRAError, match="no active adapter named 'c'"):
        L.set_weights(plain_pipe, {"c": 1.0})
    with pytest.raises(L.LoRAError, match="already active"):
        L.apply(plain_pipe, a)
    L.remove(plain_pipe)


def test_remove_restores_original_modules(plain_pipe):
    originals = {
        p: m
        for p, m in plain_pipe.unet.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    te_originals = dict(plain_pipe.text_encoder.named_modules())
    base = unet_out(plain_pipe)
    a, b = make_lora(plain_pipe, "a", 1), make_lora(plain_pipe, "b", 2)
    L.apply(plain_pipe, [a, b], [1.0, 0.5])
    L.remove(plain_pipe, ["a"])
    assert L.active(plain_pipe) == {"b": 0.5}
    L.remove(plain_pipe)
    now = dict(plain_pipe.unet.named_modules())
    for p, m in originals.items():
        assert now[p] is m, p
    for p, m in plain_pipe.text_encoder.named_modules():
        assert te_originals[p] is m
    assert np.array_equal(unet_out(plain_pipe), base)


def test_text_encoder_adapter_changes_conditioning(plain_pipe):
    lo = make_lora(plain_pipe, "te", 4)
    tokens = mx.array([plain_pipe.tokenizer.tokenize("a red cat")])
    base = np.array(plain_pipe.text_encoder(tokens).last_hidden_state)
    L.apply(plain_pipe, lo)
    runtime = np.array(plain_pipe.text_encoder(tokens).last_hidden_state)
    L.remove(plain_pipe)
    L.fuse(plain_pipe, lo)
    fused = np.array(plain_pipe.text_encoder(tokens).last_hidden_state)
    L.unfuse(plain_pipe)
    assert not np.allclose(runtime, base, atol=1e-4)
    np.testing.assert_allclose(runtime, fused, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_blend_file_round_trip(tmp_path, suffix):
    b = B.Blend(
        "dusk",
        ["styles/ink.safetensors", "oil.safetensors"],
        [0.75, -0.25],
        description='warm "ink" look\nline two',
        preview_prompt="a castle at sunset",
        normalize=True,
    )
    f = B.save_blend(b, tmp_path / f"dusk{suffix}")
    back = B.load_blend(f)
    assert back == b
    assert back.base_dir == str(tmp_path)
    assert back.adapter_paths()[1] == tmp_path / "oil.safetensors"
    assert back.effective_weights() == [1.5, -0.5]


def test_blend_file_errors(tmp_path):
    f = tmp_path / "b.json"
    f.write_text(
        json.dumps({"name": "x", "adapters": ["a.safetensors"], "weights": [1, 2]})
    )
    with pytest.raises(L.LoRAError, match="1 adapters but 2 weights"):
        B.load_blend(f)
    f.write_text(json.dumps({"name": "x", "adapters": [], "weights": [], "colour": 1}))
    with pytest.raises(L.LoRAError, match="unknown blend field.*colour"):
        B.load_blend(f)
    f.write_text(
        json.dumps({"name": "x", "adapters": ["a.safetensors"], "weights": ["hi"]})
    )
    with pytest.raises(L.LoRAError, match=r"weights\[0\]"):
        B.load_blend(f)
    g = tmp_path / "b.toml"
    g.write_text(
        'name = "x"\nadapters = ["a.safetensors", "b.safetensors"]\nweights = [1.0, -1.0]\nnormalize = true\n'
    )
    with pytest.raises(L.LoRAError, match="sum to 0"):
        B.load_blend(g).effective_weights()
    g.write_text("name = \n")
    with pytest.raises(L.LoRAError, match="cannot read blend"):
        B.load_blend(g)


def test_apply_blend_update_and_preview(plain_pipe, files, tmp_path):
    blend = B.Blend("mix", [f.name for f in files], [1.0, 0.0], base_dir=str(tmp_path))
    cfg = B.PreviewConfig(steps=2, latent_size=(8, 8), cfg_weight=2.0)
    plain = B.preview(plain_pipe, None, "a red cat", cfg)
    assert plain.shape[2] == 3 and plain.dtype == np.uint8
    cache = {}
    img = B.preview(plain_pipe, blend, "a red cat", cfg, cache=cache)
    assert len(cache) == 2
    assert L.active(plain_pipe) == {}  # preview cleans up
    assert not np.array_equal(img, plain)
    names = B.apply_blend(plain_pipe, blend, cache)
    assert names == ["mix/ink", "mix/oil"]
    same = B.generate(plain_pipe, "a red cat", cfg)
    assert np.array_equal(same, img)
    blend0 = B.update_blend_weights(plain_pipe, blend, [0.0, 0.0])
    assert L.active(plain_pipe) == {"mix/ink": 0.0, "mix/oil": 0.0}
    assert np.array_equal(B.generate(plain_pipe, "a red cat", cfg), plain)
    assert blend0.weights == [0.0, 0.0]
    L.remove(plain_pipe)
