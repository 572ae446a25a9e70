"""Train the toy text-to-image model: upstream's classes, MLX, a synthetic dataset.

Two stages, both seeded and deterministic:

1. the autoencoder (upstream ``Autoencoder``) learns to reconstruct the shape
   images (pixel MSE plus a small KL term); the dataset's per-channel latent
   mean and std are then folded into its 1x1 projections
   (``normalise_latents``), so latents are centred with unit std per channel
   and upstream's ``scaling_factor`` is 1;
2. the UNet (upstream ``UNetModel``, cross-attention at every resolution) and
   the text encoder (upstream ``CLIPTextModel``) learn together on the cached
   latents. The UNet predicts epsilon under upstream's sampler convention
   (``x_t = (x_0 + sigma * eps) / sqrt(sigma^2 + 1)``, timestep ``t`` in
   [0, 1000]); the loss is the epsilon error weighted by
   ``1 + min(sigma^2, 25)``: the x0 error (``sigma^2`` times the epsilon
   error) clipped, so high-noise steps (where colour and position are
   decided) count, without the ``1 + sigma^2`` (v-loss) weight of up to 214,
   under which the high-noise predictions had not started to learn after 300
   steps (see TRAINING_NOTES.md). 10% of the captions are dropped to "" so
   that classifier-free guidance works.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from . import shapes


@dataclass
class ToyConfig:
    seed: int = 0
    image_size: int = 32
    n_images: int = 6000
    two_object_prob: float = 0.3
    # autoencoder: three levels, so latents are image_size / 4
    vae_channels: Tuple[int, ...] = (16, 32, 32)
    vae_layers: int = 1
    latent_channels: int = 4
    vae_steps: int = 700
    vae_batch: int = 16
    vae_lr: float = 3e-3
    kl_weight: float = 1e-5
    object_weight: float = 5.0  # pixel-loss weight of the shapes vs background
    # UNet and text encoder
    unet_channels: Tuple[int, ...] = (64, 96)
    unet_layers: int = 1
    heads: int = 4
    text_dims: int = 64
    # no transformer layers: each word's information stays at its own token
    # (with causal layers it reached every later token; TRAINING_NOTES.md)
    text_layers: int = 0
    # upstream's Transformer2D always normalises with 32 groups, whatever the
    # config says; the UNet uses 32 everywhere so that its config describes it
    # (diffusers builds the same model from the folder). The autoencoder
    # honours its config's value everywhere; its 16-channel level needs <= 16.
    unet_norm_groups: int = 32
    vae_norm_groups: int = 8
    unet_steps: int = 4000
    unet_batch: int = 16
    unet_lr: float = 1.5e-3
    high_noise_frac: float = 0.5  # share of timesteps drawn from [500, 1000]
    # weight of the per-sample epsilon MSE: "v" = 1 + sigma^2 (the v loss),
    # "eps" = 1, "x0clip" = min(sigma^2, weight_clip) + 1
    loss_weight: str = "x0clip"
    weight_clip: float = 25.0
    warmup: int = 50
    caption_dropout: float = 0.1
    # share of single-object captions replaced by a partial one (no colour, no
    # position, or neither), so each word's effect is learnt on its own
    partial_captions: float = 0.3
    ema: float = 0.99


@dataclass
class Configs:
    unet: object
    text: object
    vae: object


def build(sd: ModuleType, cfg: ToyConfig):
    """A StableDiffusion object with freshly initialised toy models, and its configs."""
    from ..tiny import build_vocab

    mx.random.seed(cfg.seed)
    words = list(shapes.WORDS) + list(_extra_words())
    vocab, merges = build_vocab(words)
    tokenizer = sd.tokenizer.Tokenizer({p: i for i, p in enumerate(merges)}, vocab)
    n = len(cfg.unet_channels)
    unet_cfg = sd.config.UNetConfig(
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=(cfg.unet_layers,) * n,
        transformer_layers_per_block=(1,) * n,
        num_attention_heads=(cfg.heads,) * n,
        cross_attention_dim=(cfg.text_dims,) * n,
        norm_num_groups=cfg.unet_norm_groups,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
    )
    text_cfg = sd.config.CLIPTextModelConfig(
        num_layers=cfg.text_layers,
        model_dims=cfg.text_dims,
        num_heads=cfg.heads,
        max_length=77,
        vocab_size=len(vocab),
        projection_dim=None,
        hidden_act="quick_gelu",
    )
    vae_cfg = sd.config.AutoencoderConfig(
        latent_channels_out=2 * cfg.latent_channels,
        latent_channels_in=cfg.latent_channels,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=cfg.vae_layers,
        norm_num_groups=cfg.vae_norm_groups,
        scaling_factor=1.0,
    )
    pipe = sd.StableDiffusion.__new__(sd.StableDiffusion)
    pipe.dtype = mx.float32
    pipe.diffusion_config = sd.config.DiffusionConfig()
    pipe.sampler = sd.sampler.SimpleEulerSampler(pipe.diffusion_config)
    pipe.tokenizer = tokenizer
    pipe.unet = sd.unet.UNetModel(unet_cfg)
    pipe.text_encoder = sd.clip.CLIPTextModel(text_cfg)
    pipe.autoencoder = sd.vae.Autoencoder(vae_cfg)
    pipe.ensure_models_are_loaded()
    return pipe, Configs(unet_cfg, text_cfg, vae_cfg)


def _extra_words():
    from ..tiny import DEFAULT_WORDS

    return [w for w in DEFAULT_WORDS if w not in shapes.WORDS]


def count_params(module) -> int:
    return sum(v.size for _, v in tree_flatten(module.parameters()))


def _schedule(lr: float, steps: int, warmup: int):
    warmup = max(1, min(warmup, steps // 4))
    return optim.join_schedules(
        [
            optim.linear_schedule(lr * 0.01, lr, warmup),
            optim.cosine_decay(lr, max(1, steps - warmup), lr * 0.05),
        ],
        [warmup],
    )


Report = Callable[[str, int, float], None]


def train_vae(
    autoencoder, images: np.ndarray, cfg: ToyConfig, report: Optional[Report] = None
) -> List[float]:
    """Fit the autoencoder to images in [0, 1]; returns the loss per step."""
    rng = np.random.default_rng(cfg.seed + 1)
    key = mx.random.key(cfg.seed + 1)
    data = mx.array(images * 2 - 1)
    opt = optim.Adam(learning_rate=_schedule(cfg.vae_lr, cfg.vae_steps, cfg.warmup))

    background = mx.array(np.asarray(shapes.BACKGROUND, np.float32) * 2 - 1)

    def loss_fn(model, x, k):
        out = model(x, key=k)
        obj = (mx.abs(x - background).max(axis=-1, keepdims=True) > 0.1).astype(x.dtype)
        err = (out["x_hat"] - x) ** 2
        rec = (err * (1 + (cfg.object_weight - 1) * obj)).mean()
        kl = 0.5 * (out["mean"] ** 2 + out["logvar"].exp() - 1 - out["logvar"]).mean()
        return rec + cfg.kl_weight * kl, rec

    step_fn = nn.value_and_grad(autoencoder, loss_fn)
    losses = []
    for step in range(cfg.vae_steps):
        idx = mx.array(rng.integers(0, len(images), cfg.vae_batch))
        key, k = mx.random.split(key)
        (loss, rec), grads = step_fn(autoencoder, data[idx], k)
        opt.update(autoencoder, grads)
        mx.eval(loss, rec, autoencoder.parameters(), opt.state)
        losses.append(float(rec))
        if report:
            report("vae", step, float(rec))
    return losses


def normalise_latents(autoencoder, latents: np.ndarray) -> np.ndarray:
    """Centre and scale the latents per channel inside the autoencoder's weights.

    Upstream's ``Autoencoder`` only divides by one ``scaling_factor``; the
    per-channel mean ``m`` and std ``s`` are folded into ``quant_proj`` (the
    encoder's last 1x1 projection: mean' = (mean - m) / s, logvar' = logvar -
    2 log s) and ``post_quant_proj`` (the decoder's first: W' = W diag(s),
    b' = b + W m), so ``decode(encode(x))`` is unchanged and the encoded
    latents have zero mean and unit std per channel. Sets ``scaling_factor``
    to 1 and returns the normalised latents.
    """
    scale = float(autoencoder.scaling_factor)
    raw = latents.astype(np.float64) / scale
    m = raw.reshape(-1, raw.shape[-1]).mean(axis=0)
    s = raw.reshape(-1, raw.shape[-1]).std(axis=0)
    c = len(m)
    q_w = np.array(autoencoder.quant_proj.weight, np.float64)
    q_b = np.array(autoencoder.quant_proj.bias, np.float64)
    q_w[:c] /= s[:, None]
    q_b[:c] = (q_b[:c] - m) / s
    q_b[c:] -= 2 * np.log(s)
    p_w = np.array(autoencoder.post_quant_proj.weight, np.float64)
    p_b = np.array(autoencoder.post_quant_proj.bias, np.float64)
    p_b = p_b + p_w @ m
    p_w = p_w * s[None, :]
    autoencoder.quant_proj.weight = mx.array(q_w.astype(np.float32))
    autoencoder.quant_proj.bias = mx.array(q_b.astype(np.float32))
    autoencoder.post_quant_proj.weight = mx.array(p_w.astype(np.float32))
    autoencoder.post_quant_proj.bias = mx.array(p_b.astype(np.float32))
    autoencoder.scaling_factor = 1.0
    return ((raw - m) / s).astype(np.float32)


def encode_all(autoencoder, images: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch):
        mean, _ = autoencoder.encode(mx.array(images[i : i + batch] * 2 - 1))
        mx.eval(mean)
        out.append(np.array(mean))
    return np.concatenate(out)


class _Joint(nn.Module):
    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder


def _pad(rows: List[List[int]], extra: int) -> np.ndarray:
    n = max(len(r) for r in rows) + extra
    return np.array([r + [0] * (n - len(r)) for r in rows], np.int32)


def train_unet(
    pipe,
    latents: np.ndarray,
    captions: List[str],
    cfg: ToyConfig,
    report: Optional[Report] = None,
    partial: Optional[Dict[int, List[str]]] = None,
) -> List[float]:
    """Train the UNet and text encoder jointly; returns the loss per step.

    ``pipe.unet`` / ``pipe.text_encoder`` end up holding the EMA weights.
    ``partial`` maps an image index to shorter captions that are also true of
    it; ``cfg.partial_captions`` of those images' draws use one of them.
    """
    rng = np.random.default_rng(cfg.seed + 2)
    key = mx.random.key(cfg.seed + 2)
    tokens = [pipe.tokenizer.tokenize(c) for c in captions]
    empty = pipe.tokenizer.tokenize("")
    partial_tokens = {
        i: [pipe.tokenizer.tokenize(c) for c in texts]
        for i, texts in (partial or {}).items()
    }
    single = [i for i, c in enumerate(captions) if " and " not in c]
    sigmas = np.array(pipe.sampler._sigmas, np.float64)
    data = mx.array(latents)
    joint = _Joint(pipe.unet, pipe.text_encoder)
    ema = tree_map(lambda v: mx.array(v), joint.parameters())
    opt = optim.AdamW(
        learning_rate=_schedule(cfg.unet_lr, cfg.unet_steps, cfg.warmup),
        weight_decay=0.0,
    )

    def loss_fn(model, x0, tok, t, s, noise):
        cond = model.text_encoder(tok).last_hidden_state
        s4 = s[:, None, None, None]
        x_t = (x0 + s4 * noise) * mx.rsqrt(s4 * s4 + 1)
        eps = model.unet(x_t, t, encoder_x=cond)
        err = ((eps - noise) ** 2).mean(axis=(1, 2, 3))
        return (err * _weight(s)).mean() / 10.0

    def _weight(s):
        if cfg.loss_weight == "v":
            return 1 + s * s
        if cfg.loss_weight == "eps":
            return mx.ones_like(s) * 10.0
        if cfg.loss_weight == "x0clip":
            return 1 + mx.minimum(s * s, cfg.weight_clip)
        raise ValueError(cfg.loss_weight)

    def _caption(i):
        if rng.random() < cfg.caption_dropout:
            return empty
        options = partial_tokens.get(int(i))
        if options and rng.random() < cfg.partial_captions:
            return options[int(rng.integers(len(options)))]
        return tokens[i]

    step_fn = nn.value_and_grad(joint, loss_fn)
    losses = []
    for step in range(cfg.unet_steps):
        # Half the batches hold single-object captions only, so the encoder
        # also sees unpadded short prompts, as upstream feeds them.
        pool = single if rng.random() < 0.5 else None
        if pool is None:
            idx = rng.integers(0, len(latents), cfg.unet_batch)
        else:
            idx = np.array(pool)[rng.integers(0, len(pool), cfg.unet_batch)]
        rows = [_caption(i) for i in idx]
        tok = mx.array(_pad(rows, int(rng.integers(0, 3))))
        t_max = len(sigmas) - 1
        t_np = np.where(
            rng.random(cfg.unet_batch) < cfg.high_noise_frac,
            rng.uniform(t_max / 2, t_max, cfg.unet_batch),
            rng.uniform(0, t_max, cfg.unet_batch),
        )
        s_np = np.interp(t_np, np.arange(len(sigmas)), sigmas)
        key, k = mx.random.split(key)
        noise = mx.random.normal((cfg.unet_batch,) + latents.shape[1:], key=k)
        loss, grads = step_fn(
            joint,
            data[mx.array(idx)],
            tok,
            mx.array(t_np, mx.float32),
            mx.array(s_np, mx.float32),
            noise,
        )
        opt.update(joint, grads)
        decay = min(cfg.ema, (1 + step) / (10 + step))
        ema = tree_map(
            lambda e, p: decay * e + (1 - decay) * p, ema, joint.parameters()
        )
        mx.eval(loss, joint.parameters(), opt.state, ema)
        losses.append(float(loss))
        if report:
            report("unet", step, float(loss))
    joint.update(ema)
    mx.eval(joint.parameters())
    return losses


def init_from(sd: ModuleType, pipe, folder) -> None:
    """Start pipe's UNet and text encoder from a model folder's weights (same shapes).

    Only the weights are taken; the architecture stays the one ``build``
    made (for example more GroupNorm groups than the folder's config).
    """
    from . import folder as toy_folder

    unet = toy_folder.load_unet(sd, Path(folder) / "unet")
    text = toy_folder.load_text_encoder(sd, Path(folder) / "text_encoder")
    for name, (ours, theirs) in (
        ("unet", (pipe.unet, unet)),
        ("text_encoder", (pipe.text_encoder, text)),
    ):
        mine = dict(tree_flatten(ours.parameters()))
        given = dict(tree_flatten(theirs.parameters()))
        if {k: v.shape for k, v in mine.items()} != {
            k: v.shape for k, v in given.items()
        }:
            raise ValueError(f"{folder}/{name}: weights do not fit the model built")
        ours.update(theirs.parameters())
    mx.eval(pipe.unet.parameters(), pipe.text_encoder.parameters())


def train(
    sd: ModuleType,
    cfg: ToyConfig,
    report: Optional[Report] = None,
    vae_from=None,
    weights_from=None,
) -> Tuple[object, Configs, Dict[str, object]]:
    """Build and train the whole toy model; returns (pipe, configs, log).

    ``vae_from``: a model folder whose autoencoder (trained by an earlier run
    with the same seed and autoencoder settings) replaces stage 1.
    ``weights_from``: a model folder whose UNet and text encoder weights
    (same shapes) start stage 2 instead of a random initialisation.
    """
    t0 = time.time()
    pipe, configs = build(sd, cfg)
    images, captions, scenes = shapes.make_dataset(
        cfg.n_images, cfg.seed, cfg.two_object_prob, cfg.image_size
    )
    if vae_from is None:
        vae_losses = train_vae(pipe.autoencoder, images, cfg, report)
    else:
        from ..models.folder import load_autoencoder

        trained = load_autoencoder(sd, Path(vae_from) / "vae")
        trained.scaling_factor = 1.0
        pipe.autoencoder = trained
        vae_losses = [float("nan")]
    t1 = time.time()
    pipe.autoencoder.scaling_factor = 1.0
    latents = normalise_latents(pipe.autoencoder, encode_all(pipe.autoencoder, images))
    scale = 1.0
    configs.vae.scaling_factor = scale
    partial = {i: s[0].partial_phrases() for i, s in enumerate(scenes) if len(s) == 1}
    if weights_from is not None:
        init_from(sd, pipe, weights_from)
    unet_losses = train_unet(pipe, latents, captions, cfg, report, partial)
    t2 = time.time()
    log = dict(
        config=asdict(cfg),
        vae_losses=vae_losses,
        unet_losses=unet_losses,
        scaling_factor=scale,
        vae_seconds=t1 - t0,
        unet_seconds=t2 - t1,
        params=dict(
            unet=count_params(pipe.unet),
            text_encoder=count_params(pipe.text_encoder),
            vae=count_params(pipe.autoencoder),
        ),
    )
    return pipe, configs, log
