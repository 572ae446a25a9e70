"""Tiny random-weight Stable Diffusion pipelines built from upstream's own classes.

No weights are downloaded: the models are upstream's CLIPTextModel, UNetModel
and Autoencoder with small configs and seeded random weights, and the
tokenizer is upstream's Tokenizer over a small generated vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import mlx.core as mx

DEFAULT_WORDS = (
    "a an the of on in at and with to photo painting drawing image scene "
    "red green blue yellow orange purple white black pink brown gray "
    "circle square triangle star cat dog house tree car mountain forest castle "
    "left right top bottom centre center small large big sky sea river sunset kiss "
    "romantic cinematic portrait style art watercolor oil digital lighting "
    "dramatic soft bright dark glowing beautiful detailed two one"
).split()


def build_vocab(words: Iterable[str]) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """A CLIP-style BPE vocabulary and merge list in which every word is one token.

    Every single character (plain and word-final) is a token too, so any
    lower-case ASCII text tokenizes, unknown words as several tokens. The end
    token has the largest id, as upstream's text encoder expects.
    """
    chars = [chr(c) for c in range(33, 127)]
    tokens = ["!"] + chars[1:] + [c + "</w>" for c in chars]
    merges: List[Tuple[str, str]] = []
    seen = set(tokens)
    for word in dict.fromkeys(w.lower() for w in words):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = pieces[0]
        for piece in pieces[1:]:
            merged = prefix + piece
            if merged not in seen:
                merges.append((prefix, piece))
                tokens.append(merged)
                seen.add(merged)
            prefix = merged
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def make_tokenizer(sd_module: ModuleType, words: Iterable[str] = DEFAULT_WORDS):
    """Upstream's Tokenizer over a generated vocabulary."""
    vocab, merges = build_vocab(words)
    ranks = {pair: i for i, pair in enumerate(merges)}
    return sd_module.tokenizer.Tokenizer(ranks, vocab)


@dataclass
class TinyConfig:
    """Sizes of a tiny pipeline; the defaults run a step in well under a second."""

    channels: Tuple[int, ...] = (32, 64)
    attention: Tuple[bool, ...] = (True, True)
    layers_per_block: int = 1
    transformer_layers: Tuple[int, ...] = (1, 1)
    heads: int = 2
    text_dims: int = 32
    text_layers: int = 2
    vae_channels: Tuple[int, ...] = (32, 32)
    norm_groups: int = 8
    sdxl: bool = False
    seed: int = 0


def _unet_config(sd: ModuleType, cfg: TinyConfig, cross_dims: int):
    n = len(cfg.channels)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in cfg.attention)
    extra = {}
    if cfg.sdxl:
        time_dims = 8
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dims,
            projection_class_embeddings_input_dim=cfg.text_dims + 6 * time_dims,
        )
    return sd.config.UNetConfig(
        block_out_channels=tuple(cfg.channels),
        layers_per_block=(cfg.layers_per_block,) * n,
        transformer_layers_per_block=tuple(cfg.transformer_layers),
        num_attention_heads=(cfg.heads,) * n,
        cross_attention_dim=(cross_dims,) * n,
        norm_num_groups=cfg.norm_groups,
        down_block_types=down,
        up_block_types=up,  # upstream's loader reverses diffusers' list: this is that order
        **extra,
    )


def _text_encoder(sd: ModuleType, cfg: TinyConfig, vocab_size: int, projection: bool):
    return sd.clip.CLIPTextModel(
        sd.config.CLIPTextModelConfig(
            num_layers=cfg.text_layers,
            model_dims=cfg.text_dims,
            num_heads=cfg.heads,
            max_length=77,
            vocab_size=vocab_size,
            projection_dim=cfg.text_dims if projection else None,
            hidden_act="quick_gelu",
        )
    )


def build_pipeline(
    sd: ModuleType,
    config: Optional[TinyConfig] = None,
    words: Sequence[str] = DEFAULT_WORDS,
):
    """A StableDiffusion (or StableDiffusionXL) object of module ``sd`` with tiny random weights."""
    cfg = config or TinyConfig()
    mx.random.seed(cfg.seed)
    cls = sd.StableDiffusionXL if cfg.sdxl else sd.StableDiffusion
    pipe = cls.__new__(cls)
    pipe.dtype = mx.float32
    pipe.diffusion_config = sd.config.DiffusionConfig()
    tokenizer = make_tokenizer(sd, words)
    vocab_size = len(tokenizer.vocab)
    cross_dims = 2 * cfg.text_dims if cfg.sdxl else cfg.text_dims
    pipe.unet = sd.unet.UNetModel(_unet_config(sd, cfg, cross_dims))
    pipe.autoencoder = sd.vae.Autoencoder(
        sd.config.AutoencoderConfig(
            block_out_channels=tuple(cfg.vae_channels),
            layers_per_block=1,
            norm_num_groups=cfg.norm_groups,
        )
    )
    if cfg.sdxl:
        pipe.sampler = sd.sampler.SimpleEulerAncestralSampler(pipe.diffusion_config)
        pipe.text_encoder_1 = _text_encoder(sd, cfg, vocab_size, projection=False)
        pipe.text_encoder_2 = _text_encoder(sd, cfg, vocab_size, projection=True)
        pipe.tokenizer_1 = tokenizer
        pipe.tokenizer_2 = make_tokenizer(sd, words)
    else:
        pipe.sampler = sd.sampler.SimpleEulerSampler(pipe.diffusion_config)
        pipe.text_encoder = _text_encoder(sd, cfg, vocab_size, projection=False)
        pipe.tokenizer = tokenizer
    pipe.ensure_models_are_loaded()
    return pipe
