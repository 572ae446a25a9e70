"""What pulse_plugin.models refuses, and how: every error names the file and the field or tensor."""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import pytest

from pulse_plugin import cli, models, tensorfile
from pulse_plugin.models.config import UNetSpec
from pulse_plugin.toy import default_model_path

REF = Path(__file__).parent / "fixtures" / "reference"
PROMPT = "a red circle on the left"


@pytest.fixture
def sd21(tmp_path):
    return Path(shutil.copytree(REF / "sd21", tmp_path / "sd21"))


@pytest.fixture
def sdxl(tmp_path):
    return Path(shutil.copytree(REF / "sdxl", tmp_path / "sdxl"))


def edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_norm_num_groups_other_than_32_is_refused(sd, sd21):
    edit_json(sd21 / "unet" / "config.json", norm_num_groups=8)
    with pytest.raises(models.ModelError) as err:
        models.load_pipeline(sd21, sd)
    text = str(err.value)
    assert str(sd21 / "unet" / "config.json") in text
    assert "norm_num_groups = 8" in text and "32" in text


def test_bundled_toy_folder_is_refused_while_it_has_8_groups(sd):
    config = default_model_path() / "unet" / "config.json"
    if json.loads(config.read_text())["norm_num_groups"] == 32:
        pytest.skip("the toy model has been retrained with 32 groups")
    with pytest.raises(models.ModelError, match="norm_num_groups = 8"):
        models.load_pipeline(default_model_path(), sd)


@pytest.mark.parametrize(
    "part, file, field, value",
    [
        ("unet", "config.json", "act_fn", "gelu"),
        ("unet", "config.json", "attention_type", "gated"),
        ("unet", "config.json", "resnet_time_scale_shift", "scale_shift"),
        ("unet", "config.json", "class_embed_type", "timestep"),
        ("unet", "config.json", "time_embedding_type", "fourier"),
        ("unet", "config.json", "mid_block_type", "UNetMidBlock2D"),
        ("unet", "config.json", "norm_eps", 1e-6),
        ("unet", "config.json", "in_channels", 9),
        ("unet", "config.json", "down_block_types", ["SimpleCrossAttnDownBlock2D"] * 2),
        ("unet", "config.json", "transformer_layers_per_block", [[1], [1]]),
        ("unet", "config.json", "only_cross_attention", [True, False]),
        ("vae", "config.json", "act_fn", "relu"),
        ("vae", "config.json", "mid_block_add_attention", False),
        ("vae", "config.json", "shift_factor", 0.1159),
        ("text_encoder", "config.json", "hidden_act", "relu"),
        ("text_encoder", "config.json", "intermediate_size", 80),
        ("text_encoder", "config.json", "layer_norm_eps", 1e-6),
        ("scheduler", "scheduler_config.json", "prediction_type", "v_prediction"),
        ("scheduler", "scheduler_config.json", "beta_schedule", "squaredcos_cap_v2"),
        ("scheduler", "scheduler_config.json", "rescale_betas_zero_snr", True),
    ],
)
def test_config_values_upstream_cannot_honour(sd, sd21, part, file, field, value):
    path = sd21 / part / file
    edit_json(path, **{field: value})
    with pytest.raises(models.ModelError) as err:
        models.load_pipeline(sd21, sd)
    text = str(err.value)
    assert str(path) in text and field in text and json.dumps(value) in text
    assert "supported" in text


def test_upcast_attention_needs_float32(sd, sd21):
    edit_json(sd21 / "unet" / "config.json", upcast_attention=True)
    models.load_pipeline(sd21, sd)  # float32: the same computation
    with pytest.raises(models.ModelError, match="upcast_attention"):
        models.load_pipeline(sd21, sd, float16=True)


def test_config_missing_a_key(sd, sd21):
    edit_json(sd21 / "unet" / "config.json", block_out_channels=KeyError)
    with pytest.raises(
        models.ModelError, match=r"unet/config.json.*'block_out_channels'"
    ):
        models.load_pipeline(sd21, sd)


def test_missing_shard_is_named(sd, sd21):
    shard = sorted((sd21 / "unet").glob("*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(
        models.ModelNotFoundError, match=f"shard {shard.name} is missing"
    ):
        models.load_pipeline(sd21, sd)


def test_every_shard_is_read(sd, sd21):
    """A shard listed but holding other tensors than the index says is refused."""
    index = sd21 / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    others = sorted(set(data["weight_map"].values()) - {data["weight_map"][name]})
    data["weight_map"][name] = others[0]
    index.write_text(json.dumps(data))
    with pytest.raises(models.ModelError, match="not in the shard the index names"):
        models.load_pipeline(sd21, sd)


def _rewrite(path: Path, change):
    tensors, metadata = tensorfile.load(path)
    change(tensors)
    mx.save_safetensors(str(path), tensors, metadata=metadata)


def test_parameters_left_unset_are_named(sd, sdxl):
    path = sdxl / "vae" / "diffusion_pytorch_model.safetensors"
    _rewrite(path, lambda t: t.pop("decoder.conv_out.bias"))
    with pytest.raises(models.ModelError) as err:
        models.load_pipeline(sdxl, sd)
    assert str(path) in str(err.value)
    assert "parameters no tensor sets" in str(err.value)
    assert "decoder.conv_out.bias" in str(err.value)


def test_unexpected_tensors_are_named(sd, sdxl):
    path = sdxl / "text_encoder_2" / "model.safetensors"
    _rewrite(path, lambda t: t.update({"text_model.extra.weight": mx.zeros((2,))}))
    with pytest.raises(
        models.ModelError, match=r"no parameter.*text_model.extra.weight"
    ):
        models.load_pipeline(sdxl, sd)


def test_misshaped_tensors_are_named(sd, sdxl):
    path = sdxl / "unet" / "diffusion_pytorch_model.safetensors"
    _rewrite(path, lambda t: t.update({"conv_in.bias": mx.zeros((31,))}))
    with pytest.raises(models.ModelError, match=r"wrong shape.*conv_in.bias \(31,\)"):
        models.load_pipeline(sdxl, sd)


def test_truncated_weights_are_refused(sd, sdxl):
    path = sdxl / "vae" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(tensorfile.TensorFileError, match="truncated") as err:
        models.load_pipeline(sdxl, sd)
    assert str(path) in str(err.value)


def test_config_json_that_is_not_json(sd, sdxl):
    path = sdxl / "vae" / "config.json"
    path.write_text("{ not json")
    with pytest.raises(models.ModelError, match="not valid JSON"):
        models.load_pipeline(sdxl, sd)


def test_tokenizer_folder_without_any_tokenizer(sd, sd21):
    for f in (sd21 / "tokenizer").iterdir():
        f.unlink()
    with pytest.raises(models.ModelNotFoundError, match="tokenizer.json"):
        models.load_pipeline(sd21, sd)


def test_unet_spec_reads_the_sd21_fixture():
    spec = UNetSpec.from_file(REF / "sd21" / "unet" / "config.json")
    assert spec.heads == (2, 4) and spec.block_out_channels == (32, 32)


# ------------------------------------------------------------------ single files
@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))


def test_single_file_without_tokenizer_says_what_to_pass(sd, no_hub_cache):
    with pytest.raises(models.ModelNotFoundError) as err:
        models.load_pipeline(REF / "sd15_single_file.safetensors", sd)
    text = str(err.value)
    assert "carries no tokenizer" in text and "tokenizer=FOLDER" in text
    assert "config=FOLDER" in text


def test_single_file_with_only_a_tokenizer_uses_the_built_in_table(sd, no_hub_cache):
    """The tiny file is not SD 1.5's architecture: the table's shapes do not fit, and it says so."""
    with pytest.raises(models.ModelError) as err:
        models.load_pipeline(
            REF / "sd15_single_file.safetensors", sd, tokenizer=REF / "tokenizer_json"
        )
    assert "built-in SD 1.x config" in str(err.value)
    assert "config=FOLDER" in str(err.value)


def test_single_file_sd2_needs_a_config(sd, tmp_path):
    tensors, _ = tensorfile.load(REF / "sd15_single_file.safetensors")
    renamed = {
        k.replace("cond_stage_model.transformer.", "cond_stage_model.model."): v
        for k, v in tensors.items()
    }
    path = tmp_path / "sd2.safetensors"
    mx.save_safetensors(str(path), renamed)
    with pytest.raises(models.ModelError, match="epsilon.*v .*config=FOLDER"):
        models.load_pipeline(path, sd)


def test_unknown_checkpoint_is_refused(sd, tmp_path):
    path = tmp_path / "other.safetensors"
    mx.save_safetensors(str(path), {"transformer.blocks.0.weight": mx.zeros((2,))})
    with pytest.raises(models.ModelError, match="not a Stable Diffusion single-file"):
        models.load_pipeline(path, sd)


def test_single_file_leftover_tensor_is_named(sd, tmp_path):
    tensors, _ = tensorfile.load(REF / "sd15_single_file.safetensors")
    tensors["model.diffusion_model.input_blocks.9.0.in_layers.0.weight"] = mx.zeros(
        (32,)
    )
    path = tmp_path / "extra.safetensors"
    mx.save_safetensors(str(path), tensors)
    with pytest.raises(models.ModelError, match="input_blocks.9.0.in_layers.0.weight"):
        models.load_pipeline(path, sd, config=REF / "sd15")


def test_single_file_schedule_buffers_and_ema_are_not_model_parts(sd, tmp_path):
    tensors, _ = tensorfile.load(REF / "sd15_single_file.safetensors")
    tensors["alphas_cumprod"] = mx.ones((1000,))
    tensors["model_ema.decay"] = mx.array([0.9999])
    tensors["first_stage_model.loss.logvar"] = mx.zeros((1,))
    path = tmp_path / "with_buffers.safetensors"
    mx.save_safetensors(str(path), tensors)
    a = models.load_pipeline(path, sd, config=REF / "sd15")
    b = models.load_pipeline(
        REF / "sd15_single_file.safetensors", sd, config=REF / "sd15"
    )
    x = mx.ones((1, 8, 8, 4))
    ctx = mx.ones((1, 3, 16))
    t = mx.array([500.0])
    assert mx.array_equal(a.unet(x, t, ctx), b.unet(x, t, ctx)).item()


# ------------------------------------------------------------------ the command
def test_cli_generates_from_a_single_file(tmp_path):
    out = tmp_path / "img.png"
    argv = ["generate", PROMPT, "--model", str(REF / "sd15_single_file.safetensors")]
    argv += ["--model-config", str(REF / "sd15"), "--steps", "1", "-o", str(out)]
    assert cli.main(argv) == 0 and out.is_file()


def test_cli_refuses_an_unloadable_model_with_one_message(sd21, capsys):
    edit_json(sd21 / "unet" / "config.json", norm_num_groups=16)
    code = cli.main(["generate", PROMPT, "--model", str(sd21), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "norm_num_groups = 16" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "model, part, changes, message",
    [
        ("sd21", "unet", {"cross_attention_dim": 24}, "text encoder.* give 16-wide"),
        (
            "sd21",
            "unet",
            {
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": 8,
                "projection_class_embeddings_input_dim": 80,
            },
            "two text encoders",
        ),
        ("sdxl", "text_encoder_2", {"projection_dim": 24}, "needs a 16-wide pooled"),
        (
            "sd21",
            "vae",
            {"latent_channels": 8},
            "in_channels = 4, vae latent_channels = 8",
        ),
    ],
)
def test_parts_that_do_not_fit_together(sd, tmp_path, model, part, changes, message):
    path = Path(shutil.copytree(REF / model, tmp_path / model))
    edit_json(path / part / "config.json", **changes)
    with pytest.raises(models.ModelError, match=message):
        models.load_pipeline(path, sd)


def test_cli_single_file_without_tokenizer_exits_2_saying_what_to_pass(
    no_hub_cache, capsys
):
    argv = ["generate", PROMPT, "--model", str(REF / "sd15_single_file.safetensors")]
    assert cli.main(argv + ["--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer" in err and "--model-config" in err and "Traceback" not in err


def test_a_folder_with_only_the_fp16_variant_reads_it(sd, sdxl):
    vae = sdxl / "vae"
    want = models.load_pipeline(sdxl, sd).autoencoder.decoder.conv_out.weight
    (vae / "diffusion_pytorch_model.safetensors").rename(
        vae / "diffusion_pytorch_model.fp16.safetensors"
    )
    got = models.load_pipeline(sdxl, sd).autoencoder.decoder.conv_out.weight
    assert mx.array_equal(want, got).item()
    (vae / "diffusion_pytorch_model.fp16.safetensors").unlink()
    with pytest.raises(models.ModelNotFoundError, match="no weights"):
        models.load_pipeline(sdxl, sd)


def test_single_file_inpainting_unet_is_refused(sd, tmp_path):
    tensors, _ = tensorfile.load(REF / "sd15_single_file.safetensors")
    key = "model.diffusion_model.input_blocks.0.0.weight"
    tensors[key] = mx.zeros((32, 9, 3, 3))
    path = tmp_path / "inpainting.safetensors"
    mx.save_safetensors(str(path), tensors)
    with pytest.raises(models.ModelError, match="9 input channels and returns 4"):
        models.load_pipeline(path, sd, config=REF / "sd15")


def test_lora_training_command_takes_a_model_path(tmp_path):
    from test_lora_train import make_dataset

    from pulse_plugin.lora import train

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "lora.safetensors"
    argv = [str(data), "--model", str(REF / "sd15_single_file.safetensors")]
    # this tiny single file fits no built-in table: it needs its config folder
    code = train.main(
        argv + ["--steps", "1", "--resolution", "16", "--output", str(out)]
    )
    assert code == 2 and not out.exists()
    argv = [str(data), "--model", str(REF / "sd21"), "--steps", "1"]
    assert train.main(argv + ["--resolution", "16", "--output", str(out)]) == 0
    assert out.is_file()
