"""LoRA under faults and bad input: all-or-nothing apply / fuse, rank 0, duplicates, non-finite."""

from __future__ import annotations

import json
import struct

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from pulse_plugin import lora as L
from pulse_plugin.lora import adapters
from pulse_plugin.lora import blend as B
from pulse_plugin.lora import synth


def make_lora(pipe, name="a", seed=0, kinds=("attn", "ff", "conv", "proj")):
    unet = synth.target_paths(pipe.unet, kinds)
    t = synth.random_tensors(pipe.unet, "unet", unet, rank=4, alpha=8.0, seed=seed)
    te = synth.target_paths(pipe.text_encoder, ["attn"])
    t.update(synth.random_tensors(pipe.text_encoder, "te1", te, rank=2, seed=seed + 1))
    return L.from_tensors(t, name=name)


def snapshot(pipe):
    """Every module object and parameter array of the pipeline, by path."""
    out = {}
    for comp in ("unet", "text_encoder"):
        model = getattr(pipe, comp)
        for path, module in model.named_modules():
            out[(comp, "module", path)] = module
        for path, value in tree_flatten(model.parameters()):
            out[(comp, "param", path)] = value
    return out


def assert_same(pipe, before):
    """The pipeline holds the very same modules and arrays as in ``before``."""
    after = snapshot(pipe)
    assert after.keys() == before.keys()
    for key, obj in before.items():
        assert after[key] is obj, key


def assert_state_empty(pipe):
    st = adapters.state(pipe)
    assert L.active(pipe) == {}
    assert st.wrappers == {} and st.adapters == {} and st.fused == {}
    assert st.fused_names == []


def fail_at(monkeypatch, name, n, exc):
    """Make ``adapters.<name>`` raise ``exc`` on its n-th call (1-based)."""
    real = getattr(adapters, name)
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(adapters, name, wrapped)
    return calls


def unet_out(pipe):
    k1, k2 = mx.random.split(mx.random.key(1))
    x = mx.random.normal((2, 8, 8, 4), key=k1)
    cond = mx.random.normal((2, 5, 32), key=k2)
    out = pipe.unet(x, mx.array([500.0, 500.0]), encoder_x=cond)
    mx.eval(out)
    return np.array(out)


# ---- rank 0


def test_rank_zero_is_refused_naming_the_key(plain_pipe):
    path = synth.target_paths(plain_pipe.unet)[0]
    t = synth.random_tensors(plain_pipe.unet, "unet", [path], rank=0)
    down = next(k for k in t if k.endswith("lora_down.weight"))
    with pytest.raises(L.LoRAError, match="rank 0") as err:
        L.from_tensors(t)
    assert down in str(err.value)
    with pytest.raises(L.LoRAError, match="rank 0"):
        L.LoRALayer("unet", path, mx.zeros((0, 32)), mx.zeros((32, 0)), 1.0)
    assert_state_empty(plain_pipe)


# ---- duplicate names in a .safetensors header


def test_duplicate_tensor_names_are_refused(plain_pipe, tmp_path):
    t = synth.random_tensors(
        plain_pipe.unet, "unet", synth.target_paths(plain_pipe.unet)[:1]
    )
    down_key, up_key = sorted(t)  # lora_down, lora_up
    down, up = np.array(t[down_key]), np.array(t[up_key])
    entries = [(down_key, down), (up_key, up), (down_key, np.zeros_like(down))]
    header, data, offset = [], b"", 0
    for name, value in entries:
        raw = value.astype(np.float32).tobytes()
        shape = json.dumps(list(value.shape))
        header.append(
            f'"{name}": {{"dtype": "F32", "shape": {shape}, '
            f'"data_offsets": [{offset}, {offset + len(raw)}]}}'
        )
        data += raw
        offset += len(raw)
    text = ("{" + ", ".join(header) + "}").encode()
    f = tmp_path / "dup.safetensors"
    f.write_bytes(struct.pack("<Q", len(text)) + text + data)
    with pytest.raises(L.LoRAError, match="twice") as err:
        L.load_lora(f)
    assert str(f) in str(err.value) and down_key in str(err.value)


# ---- apply: all-or-nothing


@pytest.mark.parametrize("exc", [MemoryError("out of memory"), KeyboardInterrupt()])
def test_apply_failing_at_the_third_layer_changes_nothing(plain_pipe, monkeypatch, exc):
    lo = make_lora(plain_pipe)
    before = snapshot(plain_pipe)
    calls = fail_at(monkeypatch, "_set_child", 3, exc)
    with pytest.raises(type(exc)):
        L.apply(plain_pipe, lo)
    assert len(calls) > 3  # two wrappers went in and were taken out again
    assert_same(plain_pipe, before)
    assert_state_empty(plain_pipe)
    monkeypatch.undo()
    L.apply(plain_pipe, lo)  # a retry works
    assert L.active(plain_pipe) == {"a": 1.0}
    L.remove(plain_pipe)
    assert_same(plain_pipe, before)


def test_failed_second_apply_keeps_the_first_adapter(plain_pipe, monkeypatch):
    a = make_lora(plain_pipe, "a", 1, kinds=("attn",))
    b = make_lora(plain_pipe, "b", 2)  # the same layers and more: old and new wrappers
    base = unet_out(plain_pipe)
    L.apply(plain_pipe, a, [0.5])
    with_a = unet_out(plain_pipe)
    st = adapters.state(plain_pipe)
    lists = {slot: list(w.adapters) for slot, w in st.wrappers.items()}
    wrappers = dict(st.wrappers)
    modules = snapshot(plain_pipe)
    fail_at(monkeypatch, "_set_child", 2, MemoryError("out of memory"))
    with pytest.raises(MemoryError):
        L.apply(plain_pipe, b, [0.25])
    monkeypatch.undo()
    assert_same(plain_pipe, modules)
    assert L.active(plain_pipe) == {"a": 0.5}
    assert st.wrappers == wrappers
    assert {s: list(w.adapters) for s, w in st.wrappers.items()} == lists
    assert np.array_equal(unet_out(plain_pipe), with_a)
    L.apply(plain_pipe, b, [0.25])
    assert L.active(plain_pipe) == {"a": 0.5, "b": 0.25}
    assert not np.allclose(unet_out(plain_pipe), with_a)
    L.remove(plain_pipe)
    assert np.array_equal(unet_out(plain_pipe), base)


# ---- fuse: all-or-nothing


@pytest.mark.parametrize("exc", [MemoryError("out of memory"), KeyboardInterrupt()])
def test_fuse_failing_at_the_third_layer_changes_nothing(plain_pipe, monkeypatch, exc):
    lo = make_lora(plain_pipe)
    before = snapshot(plain_pipe)
    calls = fail_at(monkeypatch, "fused_weight", 3, exc)
    with pytest.raises(type(exc)):
        L.fuse(plain_pipe, lo, [0.7])
    assert len(calls) == 3
    assert_same(plain_pipe, before)
    assert_state_empty(plain_pipe)
    monkeypatch.undo()
    L.fuse(plain_pipe, lo, [0.7])  # a retry works, with the same result as a first try
    fused = {k: np.array(v) for k, v in tree_flatten(plain_pipe.unet.parameters())}
    L.unfuse(plain_pipe)
    assert_same(plain_pipe, before)
    fresh = make_lora(plain_pipe)
    L.fuse(plain_pipe, fresh, [0.7])
    for k, v in tree_flatten(plain_pipe.unet.parameters()):
        assert np.array_equal(np.array(v), fused[k]), k
    L.unfuse(plain_pipe)


# ---- non-finite weights and arrays


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(plain_pipe, bad, tmp_path):
    lo = make_lora(plain_pipe)
    before = snapshot(plain_pipe)
    with pytest.raises(L.LoRAError, match=r"weights\[0\] = .*finite"):
        L.apply(plain_pipe, lo, [bad])
    with pytest.raises(L.LoRAError, match=r"weights\[1\] = .*finite"):
        L.fuse(plain_pipe, [lo, make_lora(plain_pipe, "b")], [1.0, bad])
    assert_same(plain_pipe, before)
    assert_state_empty(plain_pipe)
    L.apply(plain_pipe, lo, [0.5])
    with pytest.raises(L.LoRAError, match=r"weights\['a'\] = .*finite"):
        L.set_weights(plain_pipe, {"a": bad})
    assert L.active(plain_pipe) == {"a": 0.5}
    assert all(
        a.weight == 0.5
        for w in adapters.state(plain_pipe).wrappers.values()
        for a in w.adapters
    )
    L.remove(plain_pipe)
    f = L.save_lora(lo, tmp_path / "a.safetensors")
    with pytest.raises(L.LoRAError, match=r"weights\[0\]"):
        B.Blend("mix", [str(f)], [bad])
    blend = B.Blend("mix", [str(f)], [0.5])
    names = B.apply_blend(plain_pipe, blend)
    with pytest.raises(L.LoRAError, match=r"weights\[0\]"):
        B.update_blend_weights(plain_pipe, blend, [bad])
    assert L.active(plain_pipe) == {names[0]: 0.5}
    L.remove(plain_pipe)
    assert_same(plain_pipe, before)


def test_non_finite_arrays_in_a_lora_object_are_refused(plain_pipe):
    lo = make_lora(plain_pipe)
    slot = next(iter(lo.layers))
    layer = lo.layers[slot]
    lo.layers[slot] = L.LoRALayer(
        layer.component, layer.path, layer.down, layer.up * float("inf"), layer.alpha
    )
    before = snapshot(plain_pipe)
    for op in (L.apply, L.fuse):
        with pytest.raises(L.LoRAError, match="NaN or infinite") as err:
            op(plain_pipe, lo)
        assert layer.path in str(err.value)
    assert_same(plain_pipe, before)
    assert_state_empty(plain_pipe)


# ---- formats that are not read are refused by name


@pytest.mark.parametrize(
    "keys, name",
    [
        (("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1"), "Tucker"),
        (("lokr_w1", "lokr_w2_a", "lokr_w2_b", "lokr_t2"), "Tucker"),
        (("lora_down.weight", "lora_up.weight", "dora_scale"), "DoRA"),
    ],
)
def test_lycoris_variants_and_dora_are_refused_by_name(keys, name):
    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    t = {f"{base}.{k}": mx.ones((2, 2)) for k in keys}
    for skip in (False, True):
        with pytest.raises(L.LoRAError, match=name):
            L.from_tensors(t, skip_unknown=skip)


def test_lycoris_outside_kohya_naming_is_refused_by_name():
    t = {"base_model.model.proj_in.hada_w1_a": mx.ones((2, 2))}
    with pytest.raises(L.LoRAError, match="LoHa outside kohya naming"):
        L.from_tensors(t)
