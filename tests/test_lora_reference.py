"""LoRA files written by diffusers, PEFT and in kohya naming fuse to the weights those libraries compute.

The fixtures (tests/fixtures/reference/lora, made by tools/reference_lora.py with
diffusers 0.42, transformers 5, peft 0.21) hold the LoRA files and the fused float32
weights of the changed layers as diffusers' ``fuse_lora`` / PEFT's ``merge_and_unload``
computed them. The bases are the float16 model fixtures next to them: the SD 1.5-shaped
single file and the SDXL-shaped folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from pulse_plugin import lora as L
from pulse_plugin import models, tensorfile

REF = Path(__file__).parent / "fixtures" / "reference"
FIX = REF / "lora"
BASES = {  # kind: (model fixture, load options), as tools/reference_lora.py reads them
    "sd": ("sd15_single_file.safetensors", {"config": "sd15"}),
    "sdxl": ("sdxl", {}),
}
TOLERANCE = 1e-4  # max |ours - theirs| / max |theirs| per weight, float32


def float32(model):
    model.update(tree_map(lambda x: x.astype(mx.float32), model.parameters()))
    return model


def base(sd, kind: str):
    """The fixture base as upstream models (float32), on an object LoRA code can use."""
    path, options = BASES[kind]
    pipe = models.load_pipeline(
        REF / path, sd, **{k: REF / v for k, v in options.items()}
    )
    if kind == "sdxl":
        encoders = {"text_encoder": pipe.text_encoder_1}
        encoders["text_encoder_2"] = pipe.text_encoder_2
    else:
        encoders = {"text_encoder": pipe.text_encoder}
    parts = {"unet": pipe.unet, **encoders}
    return SimpleNamespace(**{k: float32(v) for k, v in parts.items()})


def params(pipe):
    out = {}
    for part in ("unet", "text_encoder", "text_encoder_2"):
        if hasattr(pipe, part):
            for k, v in tree_flatten(getattr(pipe, part).parameters()):
                out[f"{part}.{k}"] = np.array(v)
    return out


def reference(sd, name: str):
    """The library's fused weights, mapped to upstream names with upstream's own functions."""
    out = {}
    with np.load(FIX / f"{name}.npz") as data:
        for key in data.files:
            part, rest = key.split(".", 1)
            value = mx.array(data[key])
            if part == "unet":
                mapped = sd.model_io.map_unet_weights(rest, value)
            else:
                mapped = sd.model_io.map_clip_text_encoder_weights(rest, value)
            for k, v in mapped:
                out[f"{part}.{k}"] = np.array(v)
    return out


def fuse_and_compare(sd, kind: str, lora, name: str) -> float:
    """Fuse ``lora`` into a fresh base; every weight matches the reference or is untouched."""
    pipe = base(sd, kind)
    before = params(pipe)
    L.fuse(pipe, lora)
    after = params(pipe)
    ref = reference(sd, name)
    changed = {k for k in after if not np.array_equal(after[k], before[k])}
    assert changed == set(ref), sorted(changed ^ set(ref))[:5]
    worst = 0.0
    for k, theirs in ref.items():
        assert after[k].shape == theirs.shape, k
        rel = float(np.abs(after[k] - theirs).max() / np.abs(theirs).max())
        assert rel <= TOLERANCE, (k, rel)
        worst = max(worst, rel)
    L.unfuse(pipe)
    for k, v in params(pipe).items():
        assert np.array_equal(v, before[k]), k
    return worst


CASES = [
    # (case, base, path under FIX, load_lora keywords, reference npz)
    ("diffusers + metadata", "sd", "sd_diffusers_meta", {}, "sd_diffusers_meta"),
    (
        "diffusers + metadata (file)",
        "sd",
        "sd_diffusers_meta/pytorch_lora_weights.safetensors",
        {},
        "sd_diffusers_meta",
    ),
    (
        "diffusers, no metadata",
        "sd",
        "sd_diffusers_plain.safetensors",
        {},
        "sd_diffusers_plain",
    ),
    ("kohya SD 1.x", "sd", "sd_kohya.safetensors", {}, "sd_kohya"),
    ("PEFT folder (UNet)", "sd", "sd_peft_unet", {}, "sd_peft_unet"),
    (
        "PEFT file (UNet)",
        "sd",
        "sd_peft_unet/adapter_model.safetensors",
        {},
        "sd_peft_unet",
    ),
    (
        "PEFT folder (text encoder, rsLoRA)",
        "sd",
        "sd_peft_te_rslora",
        {},
        "sd_peft_te_rslora",
    ),
    ("LyCORIS LoHa", "sd", "sd_loha.safetensors", {}, "sd_loha"),
    ("LyCORIS LoKr", "sd", "sd_lokr.safetensors", {}, "sd_lokr"),
    (
        "kohya SGM SDXL",
        "sdxl",
        "sdxl_kohya_sgm.safetensors",
        {"layers_per_block": 1},
        "sdxl_kohya_sgm",
    ),
]


@pytest.mark.parametrize(
    "case, kind, path, kwargs, name", CASES, ids=[c[0] for c in CASES]
)
def test_fused_weights_match_the_library(plain_sd, case, kind, path, kwargs, name):
    lora = L.load_lora(FIX / path, **kwargs)
    worst = fuse_and_compare(plain_sd, kind, lora, name)
    print(f"{case}: max relative difference {worst:.2e}")


def test_metadata_scale_is_used(plain_sd):
    """alpha 8 / r 4 from lora_adapter_metadata (and its patterns) is what diffusers fused."""
    lora = L.load_lora(FIX / "sd_diffusers_meta")
    scales = {p.split(".")[-1]: layer.scale for (_, p), layer in lora.layers.items()}
    assert scales["query_proj"] == 2.0  # lora_alpha 8 / r 4
    assert scales["key_proj"] == 0.5  # alpha_pattern to_k: 2
    assert scales["linear3"] == 4.0  # rank_pattern ff.net.2: 2 -> 8 / 2
    assert scales["conv_shortcut"] == 1.5  # alpha_pattern conv_shortcut: 6
    plain = L.load_lora(FIX / "sd_diffusers_plain.safetensors")
    assert {layer.scale for layer in plain.layers.values()} == {1.0}


def test_sgm_layers_per_block_must_fit_the_unet(plain_sd):
    """Read for 2 ResBlocks per level (SDXL's), this file's names do not fit: refused."""
    with pytest.raises(L.LoRAError, match="layers_per_block=2"):
        L.load_lora(FIX / "sdxl_kohya_sgm.safetensors")
    # names that exist under both readings are caught against the UNet instead
    lora = L.load_lora(FIX / "sdxl_kohya_sgm.safetensors", layers_per_block=1)
    lora.layers_per_block = 2
    pipe = base(plain_sd, "sdxl")
    before = params(pipe)
    with pytest.raises(L.LoRAError, match="layers_per_block=1"):
        L.fuse(pipe, lora)
    for k, v in params(pipe).items():
        assert np.array_equal(v, before[k]), k


def _peft_copy(tmp_path: Path, **changes) -> Path:
    out = tmp_path / "peft"
    shutil.copytree(FIX / "sd_peft_unet", out)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_peft_without_config_is_refused(tmp_path):
    f = tmp_path / "adapter_model.safetensors"
    shutil.copy(FIX / "sd_peft_unet" / "adapter_model.safetensors", f)
    with pytest.raises(L.LoRAError, match="adapter_config.json"):
        L.load_lora(f)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"use_dora": True}, "use_dora"),
        ({"r": 8}, "rank 4 in the tensors but 8"),
        ({"lora_alpha": "8"}, "lora_alpha = '8'"),
        ({"lora_alpha": float("nan")}, "lora_alpha"),
        ({"peft_type": "LOHA"}, "peft_type = 'LOHA'"),
        ({"target_modules": ["to_v"]}, "target_modules"),
        ({"rank_pattern": {"to_q": 0}}, r"rank_pattern\['to_q'\]"),
    ],
)
def test_peft_config_that_cannot_be_honoured_is_refused(tmp_path, changes, message):
    with pytest.raises(L.LoRAError, match=message) as err:
        L.load_lora(_peft_copy(tmp_path, **changes))
    assert "adapter_config.json" in str(err.value)


def test_metadata_that_cannot_be_honoured_is_refused(tmp_path):
    src = FIX / "sd_diffusers_meta" / "pytorch_lora_weights.safetensors"
    tensors, metadata = tensorfile.load(src)
    meta = json.loads(metadata["lora_adapter_metadata"])
    meta["unet.use_dora"] = True
    f = tmp_path / "dora.safetensors"
    mx.save_safetensors(
        str(f), tensors, metadata={"lora_adapter_metadata": json.dumps(meta)}
    )
    with pytest.raises(L.LoRAError, match="use_dora"):
        L.load_lora(f)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_runtime_adapters_match_fused(plain_sd, algo, tmp_path):
    """LoHa / LoKr run as runtime adapters (as exact LoRAs) give the fused model's output."""
    lora = L.load_lora(FIX / f"sd_{algo}.safetensors")
    pipe = base(plain_sd, "sd")
    k1, k2 = mx.random.split(mx.random.key(3))
    x = mx.random.normal((1, 8, 8, 4), key=k1)
    cond = mx.random.normal((1, 5, 16), key=k2)  # the base's cross_attention_dim

    def out():
        y = pipe.unet(x, mx.array([500.0]), encoder_x=cond)
        mx.eval(y)
        return np.array(y)

    plain = out()
    L.fuse(pipe, lora)
    fused = out()
    L.unfuse(pipe)
    L.apply(pipe, lora)
    runtime = out()
    L.remove(pipe)
    assert not np.allclose(fused, plain, atol=1e-3)
    np.testing.assert_allclose(runtime, fused, rtol=1e-4, atol=1e-5)
    assert np.array_equal(out(), plain)
    with pytest.raises(L.LoRAError, match="LyCORIS"):
        L.save_lora(lora, tmp_path / "x.safetensors")
