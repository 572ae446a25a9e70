"""The built-in single-file tables against the released architectures' key names, at full size.

No weights exist here, so the full-size models are built lazily (MLX evaluates
nothing): upstream's SD 1.5 and SDXL classes from the built-in configs, their
parameters written out in the original LDM/SGM names, then read back through
the single-file conversion, which must set every parameter with the right shape.
The key names checked below are names of the released checkpoints.
"""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from pulse_plugin import models, tensorfile
from pulse_plugin.models import ldm_names as names
from pulse_plugin.models import single_file
from pulse_plugin.toy import folder as save

REF = Path(__file__).parent / "fixtures" / "reference"

# names in the released v1-5-pruned / sd_xl_base_1.0 checkpoints
RELEASED = {
    "SD 1.x": [
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.output_blocks.11.1.proj_out.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.3.block.2.conv2.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
    ],
    "SDXL": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.2.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight",
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.positional_embedding",
    ],
}


def _params(module):
    return dict(tree_flatten(module.parameters()))


def _openclip(text, layers=32):
    """transformers CLIP names -> OpenCLIP (fused q/k/v), as the released SD 2.x/SDXL files have them."""
    modules = names.openclip_modules(layers)
    out = {}
    for key, value in text.items():
        if key == names.OPENCLIP_POSITION[0]:
            out[names.OPENCLIP_POSITION[1]] = value
        elif key == names.OPENCLIP_PROJECTION[0]:
            out[names.OPENCLIP_PROJECTION[1]] = value.T
        elif ".self_attn.q_proj." in key:
            base, kind = key.split(".self_attn.")[0], key.rsplit(".", 1)[1]
            fused = mx.concatenate(
                [text[f"{base}.self_attn.{p}_proj.{kind}"] for p in "qkv"], axis=0
            )
            layer = names.convert(base + ".x", modules, True)[:-2]
            out[f"{layer}.attn.in_proj_{kind}"] = fused
        elif ".self_attn.k_proj." not in key and ".self_attn.v_proj." not in key:
            out[names.convert(key, modules, True)] = value
    return out


def original_checkpoint(sd, family, specs):
    """Lazily built full-size upstream models, in the original checkpoint names."""
    unet = sd.unet.UNetModel(specs.unet.upstream(sd))
    vae = sd.vae.Autoencoder(specs.vae.upstream(sd))
    layout = single_file._layout(specs.unet, "table")
    ckpt = {}
    for key, value in save.unet_to_diffusers(_params(unet)).items():
        ckpt[
            names.UNET_PREFIX + names.convert(key, names.unet_modules(layout), True)
        ] = value
    vae_modules = names.vae_modules(len(specs.vae.block_out_channels), 2)
    for key, value in save.vae_to_diffusers(_params(vae)).items():
        new = names.convert(key, vae_modules, True)
        if ".mid.attn_1." in new and value.ndim == 2:
            value = value[:, :, None, None]
        ckpt[names.VAE_PREFIX + new] = value
    for prefix, openclip, spec in zip(
        family.text_prefixes, family.openclip, specs.text
    ):
        encoder = sd.clip.CLIPTextModel(spec.upstream(sd))
        text = save.text_encoder_to_diffusers(_params(encoder))
        text = _openclip(text) if openclip else text
        ckpt.update({prefix + k: v for k, v in text.items()})
    return ckpt


@pytest.mark.parametrize(
    "family", [single_file.SD1, single_file.SDXL], ids=lambda f: f.name
)
def test_built_in_table_reads_the_released_layout(sd, family):
    specs = single_file._specs_built_in(family, "table")
    ckpt = original_checkpoint(sd, family, specs)
    missing = [k for k in RELEASED[family.name] if k not in ckpt]
    assert not missing
    assert single_file.recognise(ckpt) is family
    unet, vae, encoders = single_file.build_models(sd, ckpt, family, specs, "table")
    # every parameter was set from the checkpoint (build_models refuses otherwise)
    assert len(_params(unet)) == sum(
        k.startswith(names.UNET_PREFIX) for k in ckpt
    ) + sum(".ff.net.0.proj." in k for k in ckpt)
    assert len(encoders) == len(family.text_prefixes)


def test_sd2_layout_gives_the_reference_text_states(sd, tmp_path):
    """The SD 1.5-shaped fixture with its text encoder in SD 2.x's OpenCLIP layout.

    As in the released SD 2.x files, the tower has one block more than the model
    uses (SD 2.x conditions on the penultimate layer) and a text projection SD 2.x
    does not use; the result must still be diffusers' text states of the fixture.
    """
    tensors, _ = tensorfile.load(REF / "sd15_single_file.safetensors")
    prefix = names.SD1_TEXT_PREFIX
    text = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    openclip = _openclip(text, layers=2)
    for key in [k for k in openclip if k.startswith("transformer.resblocks.1.")]:
        openclip[key.replace(".resblocks.1.", ".resblocks.2.")] = mx.zeros_like(
            openclip[key]
        )
    openclip["text_projection"] = mx.ones((16, 16))
    openclip["logit_scale"] = mx.array(4.6)
    ckpt = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
    ckpt.update({names.SD2_TEXT_PREFIX + k: v for k, v in openclip.items()})
    path = tmp_path / "sd2_layout.safetensors"
    mx.save_safetensors(str(path), ckpt)
    pipe = models.load_pipeline(path, sd, config=REF / "sd15")
    ref = np.load(REF / "sd15_reference.npz")
    out = np.array(pipe.text_encoder(mx.array(ref["text_ids"])).last_hidden_state)
    want = ref["text_encoder.last_hidden_state"]
    assert np.abs(out - want).max() / np.abs(want).max() <= 1e-4


def test_float16_load_of_a_single_file(sd):
    pipe = models.load_pipeline(
        REF / "sdxl_single_file.safetensors", sd, float16=True, config=REF / "sdxl"
    )
    assert pipe.unet.conv_in.weight.dtype == mx.float16
    assert pipe.text_encoder_2.token_embedding.weight.dtype == mx.float16
    assert pipe.autoencoder.decoder.conv_in.weight.dtype == mx.float32  # as upstream
