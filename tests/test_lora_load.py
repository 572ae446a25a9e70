"""LoRA loading, name mapping, validation and exact fuse / unfuse on tiny random models."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from pulse_plugin import lora as L
from pulse_plugin import tiny
from pulse_plugin.lora import formats, synth
from pulse_plugin.lora.io import delta_weight


def params(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def all_paths(model):
    return sorted(
        p for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    )


def unet_out(plain_pipe, seed=1):
    k1, k2 = mx.random.split(mx.random.key(seed))
    x = mx.random.normal((2, 8, 8, 4), key=k1)
    cond = mx.random.normal((2, 5, 32), key=k2)
    out = plain_pipe.unet(x, mx.array([500.0, 500.0]), encoder_x=cond)
    mx.eval(out)
    return np.array(out)


def test_unet_names_map_like_upstream(plain_sd, plain_pipe):
    """Our name mapping equals upstream's map_unet_weights for every Linear/Conv of the UNet."""
    for path in all_paths(plain_pipe.unet):
        name = formats.unet_module_name(path)
        mapped = plain_sd.model_io.map_unet_weights(name + ".weight", mx.zeros((2, 1)))
        ours = formats.unet_targets(name)
        assert [k for k, _ in mapped] == [p + ".weight" for p, _ in ours], name
        assert path in [p for p, _ in ours]


def test_clip_names_map_like_upstream(plain_sd, plain_pipe):
    for path in all_paths(plain_pipe.text_encoder):
        name = formats.clip_module_name(path)
        mapped = plain_sd.model_io.map_clip_text_encoder_weights(
            name + ".weight", mx.zeros(1)
        )
        assert mapped[0][0] == path + ".weight"
        assert formats.clip_target(name) == path


def test_kohya_names_round_trip(plain_pipe):
    for component, model in (
        ("unet", plain_pipe.unet),
        ("te1", plain_pipe.text_encoder),
    ):
        for path in all_paths(model):
            name = formats.module_name(component, path)
            key = formats.kohya_key(component, name, "down")
            assert formats.parse_key(key) == (component, name, "down", "kohya")


def test_other_diffusers_spellings():
    base = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert formats.parse_key(f"unet.{base}.to_q.lora_A.weight")[:3] == (
        "unet",
        f"{base}.to_q",
        "down",
    )
    assert formats.parse_key(f"unet.{base}.processor.to_out_lora.up.weight")[:3] == (
        "unet",
        f"{base}.to_out.0",
        "up",
    )
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight"
    assert formats.parse_key(te)[:3] == (
        "te1",
        "text_model.encoder.layers.0.self_attn.q_proj",
        "down",
    )
    assert formats.parse_key("lora_unet_foo.hada_t1") is None
    assert formats.parse_key("lora_unet_foo.hada_w1_a")[2:] == ("hada_w1_a", "kohya")


def test_kohya_and_diffusers_give_identical_results(plain_pipe, tmp_path):
    paths = synth.target_paths(plain_pipe.unet, ["all"])
    te_paths = synth.target_paths(plain_pipe.text_encoder, ["attn", "ff"])
    out = {}
    for fmt in ("kohya", "diffusers"):
        t = synth.random_tensors(
            plain_pipe.unet, "unet", paths, rank=4, alpha=2.0, fmt=fmt
        )
        t.update(
            synth.random_tensors(
                plain_pipe.text_encoder, "te1", te_paths, rank=2, fmt=fmt, seed=3
            )
        )
        f = tmp_path / f"{fmt}.safetensors"
        mx.save_safetensors(str(f), t)
        lo = L.load_lora(f)
        assert lo.source_format == fmt
        out[fmt] = lo
    a, b = out["kohya"], out["diffusers"]
    assert set(a.layers) == set(b.layers)
    # every Linear/Conv of the UNet (incl. conv LoCon, split FF) and the chosen TE layers
    assert {p for c, p in a.layers if c == "unet"} == set(paths)
    assert {p for c, p in a.layers if c == "te1"} == set(te_paths)
    for k in a.layers:
        assert np.array_equal(np.array(a.layers[k].down), np.array(b.layers[k].down))
        assert np.array_equal(np.array(a.layers[k].up), np.array(b.layers[k].up))
        assert a.layers[k].alpha == b.layers[k].alpha
    L.fuse(plain_pipe, a)
    fused_a = params(plain_pipe.unet)
    L.unfuse(plain_pipe)
    L.fuse(plain_pipe, b)
    fused_b = params(plain_pipe.unet)
    L.unfuse(plain_pipe)
    assert fused_a.keys() == fused_b.keys()
    for k in fused_a:
        assert np.array_equal(fused_a[k], fused_b[k]), k


def test_fuse_matches_formula_and_unfuse_is_exact(plain_pipe):
    paths = synth.target_paths(plain_pipe.unet, ["attn", "ff", "conv"])
    lo = L.from_tensors(
        synth.random_tensors(plain_pipe.unet, "unet", paths, rank=4, alpha=8.0)
    )
    before = params(plain_pipe.unet)
    before_arrays = dict(tree_flatten(plain_pipe.unet.parameters()))
    L.fuse(plain_pipe, lo, weights=[0.7])
    after = params(plain_pipe.unet)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {p + ".weight" for p in paths}
    ff = "down_blocks.0.attentions.0.transformer_blocks.0.linear2"
    layer = lo.layers[("unet", ff)]
    assert layer.scale == 2.0
    expected = before[ff + ".weight"] + 0.7 * np.array(delta_weight(layer))
    np.testing.assert_allclose(after[ff + ".weight"], expected, rtol=1e-6, atol=1e-6)
    conv = "down_blocks.1.resnets.0.conv1"
    d = np.array(delta_weight(lo.layers[("unet", conv)]))
    assert d.shape == before[conv + ".weight"].shape
    with pytest.raises(L.LoRAError, match="already fused"):
        L.fuse(plain_pipe, lo)
    L.unfuse(plain_pipe)
    for k, v in tree_flatten(plain_pipe.unet.parameters()):
        assert np.array_equal(np.array(v), before[k]), k
        assert v is before_arrays[k]  # the very same arrays are back


def test_conv_lora_matches_torch_layout(plain_pipe):
    """A 3x3 LoCon's delta in MLX layout equals the PyTorch-layout product, transposed."""
    path = "down_blocks.0.resnets.0.conv1"
    t = synth.random_tensors(plain_pipe.unet, "unet", [path], rank=3, seed=5)
    down = np.array(next(v for k, v in t.items() if k.endswith("lora_down.weight")))
    up = np.array(next(v for k, v in t.items() if k.endswith("lora_up.weight")))
    torch_delta = (up.reshape(up.shape[0], -1) @ down.reshape(3, -1)).reshape(
        up.shape[0], *down.shape[1:]
    )
    ours = np.array(delta_weight(L.from_tensors(t).layers[("unet", path)]))
    np.testing.assert_allclose(
        ours, torch_delta.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-7
    )


def test_zero_b_changes_nothing_bit_for_bit(plain_pipe):
    paths = synth.target_paths(plain_pipe.unet, ["all"])
    lo = L.from_tensors(
        synth.random_tensors(plain_pipe.unet, "unet", paths, zero_up=True)
    )
    base = unet_out(plain_pipe)
    before = params(plain_pipe.unet)
    L.fuse(plain_pipe, lo)
    for k, v in params(plain_pipe.unet).items():
        assert np.array_equal(v, before[k]), k
    assert np.array_equal(unet_out(plain_pipe), base)
    L.unfuse(plain_pipe)
    L.apply(plain_pipe, lo)
    assert np.array_equal(unet_out(plain_pipe), base)
    L.remove(plain_pipe)


def test_sdxl_text_encoders(plain_sd):
    plain_pipe = tiny.build_pipeline(plain_sd, tiny.TinyConfig(sdxl=True))
    t = {}
    for comp, model in (
        ("te1", plain_pipe.text_encoder_1),
        ("te2", plain_pipe.text_encoder_2),
    ):
        t.update(
            synth.random_tensors(model, comp, synth.target_paths(model), sdxl=True)
        )
    lo = L.from_tensors(t)
    assert any(k.startswith("lora_te2_") for k in t) and any(
        k.startswith("lora_te1_") for k in t
    )
    before2 = params(plain_pipe.text_encoder_2)
    L.fuse(plain_pipe, lo)
    assert any(
        not np.array_equal(v, before2[k])
        for k, v in params(plain_pipe.text_encoder_2).items()
    )
    L.unfuse(plain_pipe)
    for k, v in params(plain_pipe.text_encoder_2).items():
        assert np.array_equal(v, before2[k])


# ---- validation: clear errors, never a silent partial load


def _one(plain_pipe, fmt="kohya"):
    return synth.random_tensors(
        plain_pipe.unet, "unet", synth.target_paths(plain_pipe.unet)[:2], fmt=fmt
    )


def test_unknown_keys_raise_or_report(plain_pipe, tmp_path):
    t = _one(plain_pipe)
    t["lora_unet_x.scale_weight"] = mx.zeros((2, 2))
    with pytest.raises(L.LoRAError, match="scale_weight"):
        L.from_tensors(t)
    lo = L.from_tensors(t, skip_unknown=True)
    assert lo.skipped == ["lora_unet_x.scale_weight: unknown key"]
    assert len(lo.layers) == 2


def test_unmatched_module_raises_or_reports(plain_pipe):
    t = _one(plain_pipe)
    t.update(
        {
            "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": mx.zeros(
                (2, 4)
            ),
            "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": mx.zeros(
                (4, 2)
            ),
        }
    )
    lo = L.from_tensors(t)
    with pytest.raises(L.LoRAError, match="down_blocks.7.attentions.0.proj_in"):
        L.apply(plain_pipe, lo)
    assert L.active(plain_pipe) == {}  # nothing applied on failure
    reports = L.apply(plain_pipe, lo, skip_mismatched=True)
    assert len(reports[0].matched) == 2 and len(reports[0].skipped) == 1
    L.remove(plain_pipe)


def test_shape_mismatch_names_key(plain_pipe):
    t = _one(plain_pipe)
    k = next(k for k in t if k.endswith("lora_up.weight"))
    t[k] = mx.zeros((t[k].shape[0] + 1, t[k].shape[1]))
    with pytest.raises(L.LoRAError, match="Linear weight is"):
        L.fuse(plain_pipe, L.from_tensors(t))


def test_rank_alpha_nan_missing(plain_pipe, tmp_path):
    t = _one(plain_pipe)
    k = next(k for k in t if k.endswith("lora_up.weight"))
    bad = dict(t)
    bad[k] = mx.zeros((t[k].shape[0], 3))
    with pytest.raises(L.LoRAError, match="rank mismatch"):
        L.from_tensors(bad)
    bad = dict(t)
    bad[k.replace("lora_up.weight", "alpha")] = mx.array([1.0, 2.0])
    with pytest.raises(L.LoRAError, match="scalar"):
        L.from_tensors(bad)
    bad = dict(t)
    bad[k] = mx.full(t[k].shape, float("nan"))
    with pytest.raises(L.LoRAError, match="NaN"):
        L.from_tensors(bad)
    bad = dict(t)
    del bad[k]
    with pytest.raises(L.LoRAError, match="missing up"):
        L.from_tensors(bad)
    (tmp_path / "x.ckpt").write_bytes(b"junk")
    with pytest.raises(L.LoRAError, match="pickle"):
        L.load_lora(tmp_path / "x.ckpt")
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(L.LoRAError, match="safetensors file"):
        L.load_lora(tmp_path / "x.safetensors")


def test_save_load_round_trip(plain_pipe, tmp_path):
    paths = synth.target_paths(plain_pipe.unet, ["attn", "ff", "conv", "proj"])
    lo = L.from_tensors(
        synth.random_tensors(plain_pipe.unet, "unet", paths, rank=4, alpha=3.0)
    )
    for fmt in ("kohya", "diffusers"):
        f = L.save_lora(
            lo, tmp_path / f"rt_{fmt}.safetensors", fmt=fmt, metadata={"rank": 4}
        )
        back = L.load_lora(f)
        assert back.metadata["rank"] == "4"
        assert set(back.layers) == set(lo.layers)
        for k, layer in lo.layers.items():
            assert np.array_equal(np.array(back.layers[k].down), np.array(layer.down))
            assert np.array_equal(np.array(back.layers[k].up), np.array(layer.up))
            assert back.layers[k].alpha == layer.alpha


def test_separate_ff_halves_save_exactly(plain_pipe, tmp_path):
    """Trained linear1/linear2 LoRAs with separate A are saved as one exact block-diagonal layer."""
    p = "mid_blocks.1.transformer_blocks.0."
    k = mx.random.split(mx.random.key(2), 4)
    layers = {
        ("unet", p + h): L.LoRALayer(
            "unet",
            p + h,
            mx.random.normal((2, 64), key=k[i]),
            mx.random.normal((256, 2), key=k[i + 2]),
            2.0,
        )
        for i, h in enumerate(("linear1", "linear2"))
    }
    lo = L.LoRA("ff", layers)
    back = L.load_lora(L.save_lora(lo, tmp_path / "ff.safetensors"))
    for key, layer in layers.items():
        np.testing.assert_allclose(
            np.array(delta_weight(back.layers[key])),
            np.array(delta_weight(layer)),
            rtol=1e-6,
        )


# ---- kohya SGM names (SDXL), against the layout of SDXL's UNet in diffusers

# SDXL: down 0 DownBlock2D, 1-2 CrossAttn; up 0-1 CrossAttn, 2 UpBlock2D; 2 ResBlocks a level
SDXL_SGM = {
    "input_blocks_0_0": "conv_in",
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_2_0_emb_layers_1": "down_blocks.0.resnets.1.time_emb_proj",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "input_blocks_4_1_transformer_blocks_1_attn2_to_k": (
        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"
    ),
    "input_blocks_5_1_proj_out": "down_blocks.1.attentions.1.proj_out",
    "input_blocks_6_0_op": "down_blocks.1.downsamplers.0.conv",
    "input_blocks_8_1_transformer_blocks_9_ff_net_0_proj": (
        "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj"
    ),
    "middle_block_0_out_layers_3": "mid_block.resnets.0.conv2",
    "middle_block_1_transformer_blocks_0_attn1_to_out_0": (
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"
    ),
    "middle_block_2_in_layers_2": "mid_block.resnets.1.conv1",
    "output_blocks_0_0_skip_connection": "up_blocks.0.resnets.0.conv_shortcut",
    "output_blocks_2_1_proj_in": "up_blocks.0.attentions.2.proj_in",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "output_blocks_8_0_emb_layers_1": "up_blocks.2.resnets.2.time_emb_proj",
    "time_embed_0": "time_embedding.linear_1",
    "label_emb_0_2": "add_embedding.linear_2",
    "out_2": "conv_out",
    # SD 1.x in SGM names: up level 0 has no attention, so its upsampler is part 1
    "output_blocks_2_1_conv": "up_blocks.0.upsamplers.0.conv",
}


@pytest.mark.parametrize("name, module", sorted(SDXL_SGM.items()))
def test_sgm_names_map_to_diffusers_modules(name, module):
    key = f"lora_unet_{name}.lora_down.weight"
    assert formats.parse_key(key) == ("unet", module, "down", "kohya-sgm")


@pytest.mark.parametrize(
    "name",
    [
        "input_blocks_3_1_proj_in",  # part 1 of a downsampler layer
        "input_blocks_1_0_proj_in",  # an attention layer in a ResBlock part
        "input_blocks_4_1_in_layers_2",  # a ResBlock layer in an attention part
        "middle_block_3_in_layers_2",
        "output_blocks_1_2_conv",  # only a level's last layer has the upsampler
        "input_blocks_0_1_proj_in",
    ],
)
def test_sgm_names_that_fit_no_module_are_refused(name):
    with pytest.raises(L.LoRAError, match=name):
        L.from_tensors({f"lora_unet_{name}.lora_down.weight": mx.zeros((2, 4))})
