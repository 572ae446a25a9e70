"""Runtime adapters, blends with weights, blend files and quick previews on tiny models."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from pulse_plugin import lora as L
from pulse_plugin import tiny, upstream
from pulse_plugin.lora import blend as B
from pulse_plugin.lora import synth


@pytest.fixture(scope="module")
def sd():
    return upstream.load(patched=False)


@pytest.fixture()
def pipe(sd):
    return tiny.build_pipeline(sd, tiny.TinyConfig())


def unet_out(pipe, seed=1):
    k1, k2 = mx.random.split(mx.random.key(seed))
    x = mx.random.normal((2, 8, 8, 4), key=k1)
    cond = mx.random.normal((2, 5, 32), key=k2)
    out = pipe.unet(x, mx.array([500.0, 500.0]), encoder_x=cond)
    mx.eval(out)
    return np.array(out)


def make_lora(pipe, name, seed, kinds=("attn", "ff", "conv", "proj"), std=0.05):
    paths = synth.target_paths(pipe.unet, kinds)
    t = synth.random_tensors(pipe.unet, "unet", paths, rank=4, seed=seed, std=std)
    te = synth.target_paths(pipe.text_encoder, ["attn"])
    t.update(
        synth.random_tensors(pipe.text_encoder, "te1", te, rank=2, seed=seed + 100)
    )
    return L.from_tensors(t, name=name)


@pytest.fixture()
def files(pipe, tmp_path):
    out = []
    for i, name in enumerate(("ink", "oil")):
        f = L.save_lora(
            make_lora(pipe, name, seed=10 + i, std=0.2),
            tmp_path / f"{name}.safetensors",
        )
        out.append(f)
    return out


def test_runtime_matches_fused_for_a_signed_blend(pipe):
    a, b = make_lora(pipe, "a", 1), make_lora(pipe, "b", 2)
    weights = [0.6, -0.35]
    L.fuse(pipe, [a, b], weights)
    fused = unet_out(pipe)
    L.unfuse(pipe)
    base = unet_out(pipe)
    L.apply(pipe, [a, b], weights)
    runtime = unet_out(pipe)
    assert not np.allclose(runtime, base, atol=1e-3)
    np.testing.assert_allclose(runtime, fused, rtol=1e-4, atol=1e-5)
    L.remove(pipe)


def test_conv_runtime_adapter_matches_fused(pipe):
    lo = make_lora(pipe, "conv", 3, kinds=("conv",))
    L.apply(pipe, lo)
    assert any(isinstance(m, L.LoRAConv2d) for _, m in pipe.unet.named_modules())
    runtime = unet_out(pipe)
    L.remove(pipe)
    L.fuse(pipe, lo)
    fused = unet_out(pipe)
    L.unfuse(pipe)
    np.testing.assert_allclose(runtime, fused, rtol=1e-4, atol=1e-5)


def test_weight_zero_is_identity_and_weights_change_without_reload(pipe):
    a, b = make_lora(pipe, "a", 1), make_lora(pipe, "b", 2)
    base = unet_out(pipe)
    before = {k: np.array(v) for k, v in tree_flatten(pipe.unet.parameters())}
    L.fuse(pipe, [a, b], [0.0, 0.0])
    for k, v in tree_flatten(pipe.unet.parameters()):
        assert np.array_equal(np.array(v), before[k])
    L.unfuse(pipe)
    L.apply(pipe, [a, b], [0.0, 0.0])
    assert np.array_equal(unet_out(pipe), base)
    L.set_weights(pipe, {"a": 1.0})
    only_a = unet_out(pipe)
    assert not np.allclose(only_a, base, atol=1e-3)
    L.set_weights(pipe, {"a": 0.0, "b": 1.0})
    only_b = unet_out(pipe)
    assert not np.allclose(only_b, only_a, atol=1e-3)
    L.set_weights(pipe, {"a": 1.0, "b": 0.0})
    assert np.array_equal(unet_out(pipe), only_a)
    assert L.active(pipe) == {"a": 1.0, "b": 0.0}
    with pytest.raises(L.LoRAError, match="no active adapter named 'c'"):
        L.set_weights(pipe, {"c": 1.0})
    with pytest.raises(L.LoRAError, match="already active"):
        L.apply(pipe, a)
    L.remove(pipe)


def test_remove_restores_original_modules(pipe):
    originals = {
        p: m
        for p, m in pipe.unet.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    te_originals = dict(pipe.text_encoder.named_modules())
    base = unet_out(pipe)
    a, b = make_lora(pipe, "a", 1), make_lora(pipe, "b", 2)
    L.apply(pipe, [a, b], [1.0, 0.5])
    L.remove(pipe, ["a"])
    assert L.active(pipe) == {"b": 0.5}
    L.remove(pipe)
    now = dict(pipe.unet.named_modules())
    for p, m in originals.items():
        assert now[p] is m, p
    for p, m in pipe.text_encoder.named_modules():
        assert te_originals[p] is m
    assert np.array_equal(unet_out(pipe), base)


def test_text_encoder_adapter_changes_conditioning(pipe):
    lo = make_lora(pipe, "te", 4)
    tokens = mx.array([pipe.tokenizer.tokenize("a red cat")])
    base = np.array(pipe.text_encoder(tokens).last_hidden_state)
    L.apply(pipe, lo)
    runtime = np.array(pipe.text_encoder(tokens).last_hidden_state)
    L.remove(pipe)
    L.fuse(pipe, lo)
    fused = np.array(pipe.text_encoder(tokens).last_hidden_state)
    L.unfuse(pipe)
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


def test_apply_blend_update_and_preview(pipe, files, tmp_path):
    blend = B.Blend("mix", [f.name for f in files], [1.0, 0.0], base_dir=str(tmp_path))
    cfg = B.PreviewConfig(steps=2, latent_size=(8, 8), cfg_weight=2.0)
    plain = B.preview(pipe, None, "a red cat", cfg)
    assert plain.shape[2] == 3 and plain.dtype == np.uint8
    cache = {}
    img = B.preview(pipe, blend, "a red cat", cfg, cache=cache)
    assert len(cache) == 2
    assert L.active(pipe) == {}  # preview cleans up
    assert not np.array_equal(img, plain)
    names = B.apply_blend(pipe, blend, cache)
    assert names == ["mix/ink", "mix/oil"]
    same = B.generate(pipe, "a red cat", cfg)
    assert np.array_equal(same, img)
    blend0 = B.update_blend_weights(pipe, blend, [0.0, 0.0])
    assert L.active(pipe) == {"mix/ink": 0.0, "mix/oil": 0.0}
    assert np.array_equal(B.generate(pipe, "a red cat", cfg), plain)
    assert blend0.weights == [0.0, 0.0]
    L.remove(pipe)
