"""Loaded models compute what diffusers/transformers compute from the same files.

The fixtures in tests/fixtures/reference/ were written by diffusers 0.42 and
transformers 5 (tools/make_reference_fixtures.py, see its README), with the
outputs those libraries computed from them. Relative difference: max |a - b| /
max |b|, float32.
"""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from pulse_plugin import models
from pulse_plugin.models.tokenizer import load_tokenizer

REF = Path(__file__).parent / "fixtures" / "reference"
TOLERANCE = 1e-4
CASES = {
    # name: (reference, model path, load options)
    "sd21 folder (sharded, tokenizer.json only)": ("sd21", "sd21", {}),
    "sdxl folder": ("sdxl", "sdxl", {}),
    "sd15 single file (LDM)": (
        "sd15",
        "sd15_single_file.safetensors",
        {"config": "sd15"},
    ),
    "sdxl single file (SGM)": (
        "sdxl",
        "sdxl_single_file.safetensors",
        {"config": "sdxl"},
    ),
}


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max())


def nhwc(x):
    return mx.array(x).transpose(0, 2, 3, 1)


def nchw(x):
    return np.array(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, sd):
    ref_name, path, options = CASES[request.param]
    options = {k: REF / v for k, v in options.items()}
    pipe = models.load_pipeline(REF / path, sd, **options)
    return ref_name, pipe, dict(np.load(REF / f"{ref_name}_reference.npz"))


def encoders(ref_name, pipe):
    if ref_name == "sdxl":
        return [
            ("text_encoder", pipe.text_encoder_1),
            ("text_encoder_2", pipe.text_encoder_2),
        ]
    return [("text_encoder", pipe.text_encoder)]


def test_sharded_fixture_is_sharded():
    for part, index in (
        ("unet", "diffusion_pytorch_model.safetensors.index.json"),
        ("text_encoder", "model.safetensors.index.json"),
    ):
        assert (REF / "sd21" / part / index).is_file()
        assert len(list((REF / "sd21" / part).glob("*-of-*.safetensors"))) > 1


def test_text_encoders(case):
    ref_name, pipe, ref = case
    for name, encoder in encoders(ref_name, pipe):
        out = encoder(mx.array(ref["text_ids"]))
        assert rel(out.last_hidden_state, ref[f"{name}.last_hidden_state"]) <= TOLERANCE
        assert rel(out.hidden_states[-2], ref[f"{name}.penultimate"]) <= TOLERANCE
        if f"{name}.text_embeds" in ref:
            assert rel(out.pooled_output, ref[f"{name}.text_embeds"]) <= TOLERANCE


def test_unet_forward(case):
    ref_name, pipe, ref = case
    kw = {}
    if "unet_time_ids" in ref:
        kw["text_time"] = (
            mx.array(ref["unet_text_embeds"]),
            mx.array(ref["unet_time_ids"]),
        )
    out = pipe.unet(
        nhwc(ref["unet_x"]),
        mx.array(ref["unet_t"]),
        mx.array(ref["unet_context"]),
        **kw,
    )
    assert rel(nchw(out), ref["unet_out"]) <= TOLERANCE


def test_vae_decode_and_encode(case):
    _, pipe, ref = case
    vae = pipe.autoencoder
    # upstream's decode divides by the scaling factor (diffusers' pipeline does it outside)
    decoded = vae.decode(nhwc(ref["vae_z"]) * vae.scaling_factor)
    assert rel(nchw(decoded), ref["vae_decoded"]) <= TOLERANCE
    mean, _ = vae.encode(nhwc(ref["vae_image"]))
    assert rel(nchw(mean / vae.scaling_factor), ref["vae_mean"]) <= TOLERANCE


@pytest.mark.parametrize(
    "folder", ["tokenizer_json", "tokenizer_legacy", "sdxl/tokenizer_2"]
)
def test_tokenizer_ids_equal_transformers(sd, folder):
    tokens = np.load(REF / "tokens.npz")
    tok = load_tokenizer(sd, REF / folder)
    prompts = [str(p) for p in tokens["prompts"]]
    assert len(prompts) >= 5
    for i, prompt in enumerate(prompts):
        assert tok.tokenize(prompt) == tokens[f"ids_{i}"].tolist(), prompt


def test_tokenizer_json_only_folder_has_no_legacy_files():
    names = {p.name for p in (REF / "tokenizer_json").iterdir()}
    assert names == {"tokenizer.json", "tokenizer_config.json"}
