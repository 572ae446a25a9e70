"""Saving a model as a diffusers-layout folder (toy.folder) and loading it back (models)."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from pulse_plugin import models
from pulse_plugin.toy import folder, train

# text_layers=2: the committed toy model has none, this checks the layers' names
SMALL = train.ToyConfig(
    seed=5,
    vae_channels=(32, 32),
    unet_channels=(32, 64),
    text_dims=32,
    text_layers=2,
    heads=2,
)
SMALL_MAX_LENGTH = 77


@pytest.fixture
def saved(sd, tmp_path):
    pipe, configs = train.build(sd, SMALL)
    folder.save_pipeline(
        pipe, tmp_path / "m", configs.unet, configs.text, configs.vae, 16
    )
    return pipe, tmp_path / "m"


def _params(module):
    return dict(tree_flatten(module.parameters()))


def test_layout_and_diffusers_names(saved):
    _, path = saved
    for part in ("unet", "text_encoder", "vae", "tokenizer", "scheduler"):
        assert (path / part).is_dir()
    unet = mx.load(str(path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight" in unet
    assert "down_blocks.0.downsamplers.0.conv.weight" in unet
    ff = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"
    assert unet[ff].shape[0] == 2 * 4 * 32  # GEGLU: both halves in one matrix
    assert unet["conv_in.weight"].shape[1] == 4  # (O, I, H, W), torch layout
    text = mx.load(str(path / "text_encoder" / "model.safetensors"))
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in text
    assert "text_model.embeddings.token_embedding.weight" in text
    vae = mx.load(str(path / "vae" / "diffusion_pytorch_model.safetensors"))
    assert vae["quant_conv.weight"].ndim == 4
    assert "decoder.mid_block.attentions.0.to_q.weight" in vae
    merges = (path / "tokenizer" / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version")
    sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "epsilon"


def test_folder_has_what_diffusers_needs_to_build_a_pipeline(saved):
    # tools/compare_toy_with_diffusers.py checks the toy folder in diffusers
    # itself; this checks the files that make that possible are written
    pipe, path = saved
    tok = json.loads((path / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok["model_max_length"] == SMALL_MAX_LENGTH  # no overflowing default
    assert pipe.tokenizer.vocab[tok["pad_token"]] == 0  # upstream pads with id 0
    assert tok["bos_token"] in pipe.tokenizer.vocab
    assert tok["eos_token"] in pipe.tokenizer.vocab
    index = json.loads((path / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False
    unet = json.loads((path / "unet" / "config.json").read_text())
    assert unet["norm_num_groups"] == 32  # what upstream's Transformer2D uses


def test_round_trip_bit_for_bit(sd, saved):
    pipe, path = saved
    loaded = models.load_pipeline(path, sd)
    assert type(loaded) is sd.StableDiffusion
    for name in ("unet", "text_encoder", "autoencoder"):
        a, b = _params(getattr(pipe, name)), _params(getattr(loaded, name))
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape, k
            assert mx.array_equal(a[k], b[k]).item(), k
    text = "a red circle on the left"
    assert loaded.tokenizer.tokenize(text) == pipe.tokenizer.tokenize(text)
    assert loaded.autoencoder.scaling_factor == pipe.autoencoder.scaling_factor

    def run(p):
        x = None
        for x in p.generate_latents(
            text, n_images=2, num_steps=3, latent_size=(4, 4), seed=1
        ):
            pass
        return np.array(p.decode(x))

    assert np.array_equal(run(pipe), run(loaded))


def test_load_rejects_incomplete_folder(sd, tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="not a diffusers-layout"):
        models.load_pipeline(tmp_path, sd)


def test_non_epsilon_scheduler_is_refused(sd, saved):
    _, path = saved
    cfg_path = path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(
        models.ModelError, match="prediction_type.*v_prediction.*epsilon"
    ):
        models.load_pipeline(path, sd)


def test_sdxl_folder_round_trip(sd, tmp_path):
    from pulse_plugin import tiny

    cfg = tiny.TinyConfig(sdxl=True, seed=2, norm_groups=32)
    pipe = tiny.build_pipeline(sd, cfg)
    n_vocab = len(pipe.tokenizer_1.vocab)

    def text_cfg(projection):
        return sd.config.CLIPTextModelConfig(
            num_layers=cfg.text_layers,
            model_dims=cfg.text_dims,
            num_heads=cfg.heads,
            vocab_size=n_vocab,
            projection_dim=cfg.text_dims if projection else None,
        )

    vae_cfg = sd.config.AutoencoderConfig(
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        norm_num_groups=cfg.norm_groups,
    )
    unet_cfg = tiny._unet_config(sd, cfg, 2 * cfg.text_dims)
    path = folder.save_pipeline(
        pipe, tmp_path / "xl", unet_cfg, (text_cfg(False), text_cfg(True)), vae_cfg, 16
    )
    loaded = models.load_pipeline(path, sd)
    assert type(loaded) is sd.StableDiffusionXL
    for name in ("unet", "text_encoder_1", "text_encoder_2", "autoencoder"):
        a, b = _params(getattr(pipe, name)), _params(getattr(loaded, name))
        assert a.keys() == b.keys(), name
        assert all(mx.array_equal(a[k], b[k]).item() for k in a), name
