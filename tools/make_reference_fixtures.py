"""Write the reference fixtures: small random-weight models saved by diffusers/transformers.

Run with a Python that has torch, diffusers, transformers and safetensors (CI never
runs this; the fixtures are committed):

    /work/refenv/bin/python tools/make_reference_fixtures.py [--out tests/fixtures/reference]

Everything is written by the libraries' own save functions (``save_pretrained``),
except the single-file checkpoints, which are written in the original LDM/SGM
layout with the tables of ``pulse_plugin/models/ldm_names.py`` and then checked
with diffusers' own ``from_single_file``: it must give the folder's weights
exactly. Next to the models, ``*.npz`` hold what diffusers/transformers compute
from the saved files for fixed inputs. If ``tools/reference_lora.py`` exists,
its ``make(out_dir)`` writes the LoRA fixtures into the same folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "reference"
WORDS = (
    "a an the of on in photo red green blue yellow circle square triangle cat dog "
    "house tree left right top bottom small large sky sea sunset painting"
).split()
PROMPTS = [
    "a red circle on the left",
    "A photo of a cat, in the sky!",
    "small   blue square  on the top",
    "a dogcat painting 2 trees",
    "",
    "it's the cat's tree; RED,green...blue?",
    "a   sunset\n\tover the sea 1999",
]
SEED = 0
SDXL_WIDTHS = (8, 16)  # SDXL's two text encoders: the second wider, as in SDXL


def _names():
    """pulse_plugin/models/ldm_names.py, imported by path (it needs no MLX)."""
    path = ROOT / "pulse_plugin" / "models" / "ldm_names.py"
    spec = importlib.util.spec_from_file_location("ldm_names", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ldm_names"] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------- tokenizer
def write_vocab(folder: Path) -> None:
    """vocab.json and merges.txt of a small CLIP BPE vocabulary (every word one token).

    The scheme of pulse_plugin.tiny.build_vocab, restated because this script runs
    without MLX (which pulse_plugin.tiny imports).
    """
    chars = [chr(c) for c in range(33, 127)]
    tokens = chars + [c + "</w>" for c in chars]
    merges, seen = [], set(tokens)
    for word in dict.fromkeys(WORDS):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = pieces[0]
        for piece in pieces[1:]:
            merged = prefix + piece
            if merged not in seen:
                merges.append(f"{prefix} {piece}")
                tokens.append(merged)
                seen.add(merged)
            prefix = merged
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def make_tokenizers(out: Path):
    """A legacy vocab.json/merges.txt folder and the tokenizer.json-only folder transformers 5 saves."""
    from transformers import CLIPTokenizer

    legacy = out / "tokenizer_legacy"
    write_vocab(legacy)
    tok = CLIPTokenizer.from_pretrained(legacy)  # transformers reads the legacy files
    assert len(tok) == len(json.loads((legacy / "vocab.json").read_text()))
    tok.save_pretrained(out / "tokenizer_json")
    again = CLIPTokenizer.from_pretrained(out / "tokenizer_json")
    ids = [again(p)["input_ids"] for p in PROMPTS]
    assert ids == [tok(p)["input_ids"] for p in PROMPTS]
    np.savez(
        out / "tokens.npz",
        prompts=np.array(PROMPTS),
        **{f"ids_{i}": np.array(x, dtype=np.int64) for i, x in enumerate(ids)},
    )
    return again


# ----------------------------------------------------------------- models
def _jitter(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value (norm weights too), then round to fp16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
            p.copy_(p.half().float())


def _text_encoder(tok, act: str, projection: bool, seed: int, width: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=width,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    _jitter(model, seed)
    return model.eval()


def _vae(scaling: float, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(2, 4),  # the width changes between levels (a shortcut)
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,  # upstream's autoencoder honours the group count
        sample_size=16,
        scaling_factor=scaling,
    )
    _jitter(vae, seed)
    return vae.eval()


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="epsilon",
    )


def _unet(kind: str, seed: int):
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
    )
    if kind == "sd15":
        cfg = dict(
            block_out_channels=(32, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8,
            cross_attention_dim=16,
            use_linear_projection=False,
        )
    elif kind == "sd21":
        # attention at level 0 (2 heads) and in the mid block (4 heads): per-block
        # heads, in diffusers' order and reversed for the up blocks
        cfg = dict(
            block_out_channels=(32, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4),
            cross_attention_dim=16,
            use_linear_projection=True,
        )
    else:  # sdxl
        cfg = dict(
            block_out_channels=(32, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=sum(SDXL_WIDTHS),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=SDXL_WIDTHS[1] + 6 * 8,
        )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**common, **cfg)
    _jitter(unet, seed)
    return unet.eval()


def make_pipeline(kind: str, out: Path, tok) -> Path:
    """Save an SD 1.5-, SD 2.1- or SDXL-shaped pipeline with diffusers' save_pretrained."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    seed = {"sd15": 1, "sd21": 2, "sdxl": 3}[kind]
    parts = dict(
        unet=_unet(kind, seed),
        vae=_vae(0.13025 if kind == "sdxl" else 0.18215, seed + 10),
        scheduler=_scheduler(),
        tokenizer=tok,
    )
    act = "quick_gelu" if kind == "sd15" else "gelu"
    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline(
            text_encoder=_text_encoder(
                tok, "quick_gelu", False, seed + 20, width=SDXL_WIDTHS[0]
            ),
            # wider than the first, as in SDXL (diffusers tells the two apart by width)
            text_encoder_2=_text_encoder(
                tok, "gelu", True, seed + 30, width=SDXL_WIDTHS[1]
            ),
            tokenizer_2=tok,
            **parts,
        )
    else:
        pipe = StableDiffusionPipeline(
            text_encoder=_text_encoder(tok, act, False, seed + 20),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **parts,
        )
    folder = out / kind
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


def make_sharded(folder: Path) -> None:
    """Save the folder's UNet and text encoder again, in several shards with an index json."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(
        folder / "unet", torch_dtype=torch.float16
    )
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float16)
    for part in ("unet", "text_encoder"):
        for f in (folder / part).glob("*.safetensors"):
            f.unlink()
    unet.save_pretrained(folder / "unet", max_shard_size="250KB")
    text.save_pretrained(folder / "text_encoder", max_shard_size="20KB")
    for part, index in (
        ("unet", "diffusion_pytorch_model.safetensors.index.json"),
        ("text_encoder", "model.safetensors.index.json"),
    ):
        shards = set(
            json.loads((folder / part / index).read_text())["weight_map"].values()
        )
        assert len(shards) > 1, (part, shards)


# ----------------------------------------------------------------- single files
def _text_state(model) -> Dict[str, torch.Tensor]:
    """A CLIP text state dict with the ``text_model.`` prefix of the original checkpoints.

    transformers >= 5.6 saves CLIPTextModel without it (CLIPTextModelWithProjection keeps it).
    """
    return {
        (
            k if k.startswith(("text_model.", "text_projection")) else "text_model." + k
        ): v
        for k, v in model.state_dict().items()
    }


def _openclip(
    names, sd: Dict[str, torch.Tensor], layers: int
) -> Dict[str, torch.Tensor]:
    """A transformers CLIP text state dict in OpenCLIP's names (q/k/v fused)."""
    modules = names.openclip_modules(layers)
    out = {}
    for key, value in sd.items():
        if key == names.OPENCLIP_POSITION[0]:
            out[names.OPENCLIP_POSITION[1]] = value
        elif key == names.OPENCLIP_PROJECTION[0]:
            out[names.OPENCLIP_PROJECTION[1]] = value.T.contiguous()
        elif ".self_attn.q_proj." in key:
            kind = key.rsplit(".", 1)[1]
            base = key.split(".self_attn.")[0]
            fused = torch.cat(
                [sd[f"{base}.self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0
            )
            layer = names.convert(base + ".x", modules, True)[:-2]
            out[f"{layer}.attn.in_proj_{kind}"] = fused
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            out[names.convert(key, modules, True)] = value
    return out


def _layout(names, unet):
    cfg = unet.config
    return names.UNetLayout(
        levels=len(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_attention=tuple("CrossAttn" in t for t in cfg.down_block_types),
        up_attention=tuple("CrossAttn" in t for t in cfg.up_block_types),
        text_time=cfg.addition_embed_type == "text_time",
    )


def make_single_file(kind: str, out: Path, folder: Path) -> Path:
    """The folder's weights as one checkpoint in the original layout, checked by from_single_file."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    names = _names()
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float16)
    unet_modules = names.unet_modules(_layout(names, pipe.unet))
    vae_cfg = pipe.vae.config
    vae_modules = names.vae_modules(
        len(vae_cfg.block_out_channels), vae_cfg.layers_per_block
    )
    ckpt: Dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        ckpt[names.UNET_PREFIX + names.convert(key, unet_modules, True)] = value
    for key, value in pipe.vae.state_dict().items():
        new = names.convert(key, vae_modules, True)
        if ".mid.attn_1." in new and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convs
        ckpt[names.VAE_PREFIX + new] = value
    text = _text_state(pipe.text_encoder)
    if kind == "sd15":
        ckpt.update({names.SD1_TEXT_PREFIX + k: v for k, v in text.items()})
    elif kind == "sd21":
        layers = pipe.text_encoder.config.num_hidden_layers
        ckpt.update(
            {
                names.SD2_TEXT_PREFIX + k: v
                for k, v in _openclip(names, text, layers).items()
            }
        )
    else:
        first, second = names.SDXL_TEXT_PREFIXES
        ckpt.update({first + k: v for k, v in text.items()})
        text2 = _text_state(pipe.text_encoder_2)
        layers = pipe.text_encoder_2.config.num_hidden_layers
        ckpt.update({second + k: v for k, v in _openclip(names, text2, layers).items()})
    path = out / f"{kind}_single_file.safetensors"
    save_file({k: v.contiguous() for k, v in sorted(ckpt.items())}, str(path))
    check = cls.from_single_file(
        str(path), config=str(folder), torch_dtype=torch.float16, local_files_only=True
    )
    for part in ("unet", "vae", "text_encoder") + (
        ("text_encoder_2",) if kind == "sdxl" else ()
    ):
        want, got = getattr(pipe, part).state_dict(), getattr(check, part).state_dict()
        assert want.keys() == got.keys(), (part, set(want) ^ set(got))
        for k in want:
            assert torch.equal(want[k], got[k]), (part, k)
    return path


# ----------------------------------------------------------------- references
def _inputs(unet, seed: int):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    ctx = torch.randn(2, 5, cfg.cross_attention_dim, generator=g)
    return g, x, ctx


def make_references(kind: str, out: Path, folder: Path) -> Path:
    """What diffusers/transformers compute from the saved folder, in float32."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32)
    ref: Dict[str, np.ndarray] = {}
    # padded with the end token, so the pooled (first end token) position is the same
    ids = torch.tensor(pipe.tokenizer(PROMPTS[:2], padding="longest")["input_ids"])
    ref["text_ids"] = ids.numpy()
    encoders = [("text_encoder", pipe.text_encoder)]
    if kind == "sdxl":
        encoders.append(("text_encoder_2", pipe.text_encoder_2))
    with torch.no_grad():
        for name, enc in encoders:
            res = enc(ids, output_hidden_states=True)
            ref[f"{name}.last_hidden_state"] = res.last_hidden_state.numpy()
            ref[f"{name}.penultimate"] = res.hidden_states[-2].numpy()
            if hasattr(res, "text_embeds"):
                ref[f"{name}.text_embeds"] = res.text_embeds.numpy()
        g, x, ctx = _inputs(pipe.unet, 100)
        t = torch.tensor([999.0, 321.0])
        ref.update(unet_x=x.numpy(), unet_t=t.numpy(), unet_context=ctx.numpy())
        kw = {}
        if kind == "sdxl":
            text_embeds = torch.randn(2, SDXL_WIDTHS[1], generator=g)
            time_ids = torch.tensor(
                [[16, 16, 0, 0, 16, 16], [32, 24, 2, 4, 32, 24]]
            ).float()
            kw["added_cond_kwargs"] = dict(text_embeds=text_embeds, time_ids=time_ids)
            ref.update(
                unet_text_embeds=text_embeds.numpy(), unet_time_ids=time_ids.numpy()
            )
        ref["unet_out"] = pipe.unet(
            x, t, encoder_hidden_states=ctx, **kw
        ).sample.numpy()
        z = torch.randn(1, 4, 8, 8, generator=g)
        ref["vae_z"] = z.numpy()
        ref["vae_decoded"] = pipe.vae.decode(z).sample.numpy()
        image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
        ref["vae_image"] = image.numpy()
        ref["vae_mean"] = pipe.vae.encode(image).latent_dist.mean.numpy()
    path = out / f"{kind}_reference.npz"
    np.savez_compressed(path, **ref)
    return path


def make_models(out: Path) -> None:
    """All model fixtures: folders, shards, tokenizers, single files, references."""
    tok = make_tokenizers(out)
    for kind in ("sd15", "sd21", "sdxl"):
        folder = make_pipeline(kind, out, tok)
        if kind == "sd21":
            make_sharded(folder)  # the references are then computed from the shards
        else:
            make_single_file(kind, out, folder)
        make_references(kind, out, folder)
    # SD 1.5 is kept as a single file; its folder keeps the configs and the tokenizer
    # (what from_single_file(config=...) reads), not a second copy of the weights.
    for f in (out / "sd15").rglob("*.safetensors"):
        f.unlink()


def sizes(out: Path) -> Dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_size
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("sd15", "sd21", "sdxl", "tokenizer_legacy", "tokenizer_json"):
        shutil.rmtree(out / name, ignore_errors=True)
    torch.manual_seed(SEED)
    make_models(out)
    lora = ROOT / "tools" / "reference_lora.py"
    if lora.is_file():
        spec = importlib.util.spec_from_file_location("reference_lora", lora)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.make(out)
    total = sum(sizes(out).values())
    print(f"wrote {out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
