"""Train a LoRA with MLX autograd on a folder of captioned images (epsilon prediction).

The autoencoder and text encoder(s) are frozen: latents (the encoder's mean)
and text conditioning are computed once. Only the LoRA A/B matrices on the
chosen UNet layers are trainable. Every step draws its batch, timesteps and
noise from keys derived from ``(seed, step)``, so a run resumed from a
checkpoint takes exactly the same steps as one that never stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path
from PIL import Image

from .. import tensorfile
from . import adapters, synth
from .io import LoRA, LoRAError, LoRALayer, save_lora

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TRAIN_NAME = "__train__"
TARGET_KINDS = ("attn", "ff", "proj", "conv", "resnet", "all")
# Config fields a checkpoint must share with the run that resumes it.
RESUME_FIELDS = (
    "rank",
    "alpha",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "resolution",
    "seed",
    "targets",
    "base_model",
)


class DatasetError(LoRAError):
    """The training folder is missing, empty, or has an unusable image or caption."""


@dataclass
class TrainConfig:
    """Hyper-parameters and files of a LoRA training run."""

    output: str = "lora.safetensors"
    rank: int = 4
    alpha: Optional[float] = None  # None: alpha = rank (scale 1)
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    steps: int = 500
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    targets: Tuple[str, ...] = ("attn",)  # attn, ff, proj, conv, resnet, all
    checkpoint_every: int = 0  # 0: no checkpoints
    checkpoint_dir: Optional[str] = None  # default: <output stem>_checkpoints
    resume: Optional[str] = None  # a checkpoint .safetensors, or "latest"
    base_model: str = "unknown"
    allow_upscale: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("rank", self.rank >= 1),
            (
                "alpha",
                self.alpha is None or (math.isfinite(self.alpha) and self.alpha > 0),
            ),
            (
                "learning_rate",
                math.isfinite(self.learning_rate) and self.learning_rate > 0,
            ),
            ("steps", self.steps >= 1),
            ("batch_size", self.batch_size >= 1),
            ("resolution", self.resolution >= 8 and self.resolution % 8 == 0),
            ("checkpoint_every", self.checkpoint_every >= 0),
            (
                "weight_decay",
                math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            ),
            ("targets", bool(self.targets) and set(self.targets) <= set(TARGET_KINDS)),
            ("output", Path(self.output).suffix == ".safetensors"),
        ]
        for name, ok in checks:
            if not ok:
                raise LoRAError(
                    f"TrainConfig.{name} = {getattr(self, name)!r} is invalid"
                )
        self.targets = tuple(self.targets)

    @property
    def lora_alpha(self) -> float:
        """alpha, defaulting to the rank."""
        return float(self.alpha if self.alpha is not None else self.rank)

    def checkpoints(self) -> Path:
        """The checkpoint folder."""
        out = Path(self.output)
        return Path(self.checkpoint_dir or out.with_name(out.stem + "_checkpoints"))


@dataclass
class Example:
    """One training image and its caption."""

    image: Path
    caption: str
    size: Tuple[int, int] = (0, 0)


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:  # PIL raises many types for bad files
        raise DatasetError(f"{path}: unreadable image ({exc})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable text file ({exc})") from None


def _from_metadata(folder: Path, meta: Path) -> List[Tuple[Path, str]]:
    pairs = []
    for n, line in enumerate(_read_text(meta).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((folder / row["file_name"], str(row["text"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(
                f"{meta}:{n}: expected a JSON object with 'file_name' and 'text' ({exc})"
            ) from None
    return pairs


def scan_dataset(
    folder: str | Path, resolution: int, allow_upscale: bool = False
) -> List[Example]:
    """Pairs (image, caption) from ``image.png`` + ``image.txt`` files or ``metadata.jsonl``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder not found")
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        pairs = _from_metadata(folder, meta)
    else:
        pairs = []
        images = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        for image in images:
            caption = image.with_suffix(".txt")
            if not caption.is_file():
                raise DatasetError(
                    f"{image}: no caption file {caption.name} (or give a metadata.jsonl)"
                )
            pairs.append((image, _read_text(caption).strip()))
    if not pairs:
        raise DatasetError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) with captions, "
            "and no metadata.jsonl"
        )
    out = []
    for image, caption in pairs:
        if not image.is_file():
            raise DatasetError(f"{image}: listed in metadata.jsonl but missing")
        if not caption:
            raise DatasetError(f"{image}: empty caption")
        w, h = _read_image(image).size
        if min(w, h) < resolution and not allow_upscale:
            raise DatasetError(
                f"{image}: {w}x{h} is smaller than the training resolution {resolution} "
                "(lower the resolution, or allow upscaling: --allow-upscale)"
            )
        out.append(Example(image, caption, (w, h)))
    return out


def load_image(path: Path, resolution: int) -> np.ndarray:
    """RGB in [-1, 1], shorter side resized to ``resolution`` and centre-cropped (H, W, 3)."""
    im = _read_image(path)
    w, h = im.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    return np.asarray(im, dtype=np.float32) / 127.5 - 1.0


def encode_images(pipe, examples: Sequence[Example], resolution: int) -> mx.array:
    """Latents (the autoencoder's mean) of all images, one at a time."""
    out = []
    for ex in examples:
        x = mx.array(load_image(ex.image, resolution))[None]
        mean, _ = pipe.autoencoder.encode(x)
        mx.eval(mean)
        out.append(mean)
    return mx.concatenate(out, axis=0)


def _tokens(tokenizer, captions: Sequence[str]) -> mx.array:
    toks = [tokenizer.tokenize(c) for c in captions]
    n = max(len(t) for t in toks)
    return mx.array([t + [0] * (n - len(t)) for t in toks])  # upstream pads with 0


def encode_text(pipe, captions: Sequence[str]) -> Tuple[mx.array, Optional[mx.array]]:
    """Text conditioning as upstream builds it; SDXL also returns the pooled output."""
    if hasattr(pipe, "text_encoder_2"):
        c1 = pipe.text_encoder_1(_tokens(pipe.tokenizer_1, captions))
        c2 = pipe.text_encoder_2(_tokens(pipe.tokenizer_2, captions))
        cond = mx.concatenate([c1.hidden_states[-2], c2.hidden_states[-2]], axis=-1)
        pooled = c2.pooled_output
        mx.eval(cond, pooled)
        return cond, pooled
    cond = pipe.text_encoder(_tokens(pipe.tokenizer, captions)).last_hidden_state
    mx.eval(cond)
    return cond, None


def init_lora(
    model: nn.Module, paths: Sequence[str], rank: int, alpha: float, seed: int
) -> LoRA:
    """A trainable LoRA: A uniform in +-1/sqrt(fan_in), B = 0 (the model starts unchanged)."""
    key = mx.random.key(seed)
    layers: Dict[Tuple[str, str], LoRALayer] = {}
    for path in paths:
        module = synth._get(model, path)
        w = module.weight
        key, sub = mx.random.split(key)
        if isinstance(module, nn.Conv2d):
            fan_in = int(np.prod(w.shape[1:]))
            down_shape, up = (rank, *w.shape[1:]), mx.zeros((w.shape[0], 1, 1, rank))
        else:
            fan_in = int(w.shape[1])
            down_shape, up = (rank, w.shape[1]), mx.zeros((w.shape[0], rank))
        bound = 1.0 / math.sqrt(fan_in)
        down = mx.random.uniform(-bound, bound, down_shape, key=sub)
        layers[("unet", path)] = LoRALayer("unet", path, down, up, alpha, source=path)
    return LoRA(TRAIN_NAME, layers)


def _trained_adapters(pipe) -> Dict[Tuple[str, str], adapters.LoRAAdapter]:
    st = adapters.state(pipe)
    out = {}
    for slot in st.adapters[TRAIN_NAME]:
        out[slot] = next(a for a in st.wrappers[slot].adapters if a.name == TRAIN_NAME)
    return out


def current_lora(pipe, config: TrainConfig, name: str = "trained") -> LoRA:
    """The LoRA being trained, as a LoRA object (arrays shared with the adapters)."""
    layers = {
        slot: LoRALayer(slot[0], slot[1], a.down, a.up, config.lora_alpha)
        for slot, a in _trained_adapters(pipe).items()
    }
    return LoRA(name, layers)


def step_keys(seed: int, step: int) -> Tuple[np.random.Generator, mx.array]:
    """The numpy generator (batch choice) and MLX key (timesteps, noise) of one step."""
    state = np.random.SeedSequence([seed, step]).generate_state(2)
    return np.random.default_rng(int(state[0])), mx.random.key(int(state[1]))


def dataset_fingerprint(examples: Sequence[Example]) -> str:
    """A hash of the images' bytes and captions (a resumed run must train on the same data)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.image.read_bytes())
        h.update(b"\0" + ex.caption.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def _metadata(
    config: TrainConfig, step: int, n: int, loss: Optional[float]
) -> Dict[str, str]:
    return {
        "ss_base_model": config.base_model,
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.lora_alpha),
        "ss_steps": str(step),
        "ss_num_train_images": str(n),
        "ss_resolution": str(config.resolution),
        "ss_learning_rate": str(config.learning_rate),
        "ss_batch_size": str(config.batch_size),
        "ss_seed": str(config.seed),
        "pulse_targets": ",".join(config.targets),
        "pulse_final_loss": "" if loss is None else f"{loss:.6f}",
        "pulse_objective": "epsilon",
    }


def write_atomically(path: Path, write: Callable[[Path], Any]) -> Path:
    """write(tmp) then rename onto path: an interrupted write leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_checkpoint(
    pipe,
    optimizer,
    config: TrainConfig,
    step: int,
    losses: List[float],
    n: int,
    dataset: str,
) -> Path:
    """Adapter arrays + optimizer state (exact resume) and a loadable LoRA file for ``step``.

    ``n`` is the number of training images, ``dataset`` their dataset_fingerprint.
    """
    folder = config.checkpoints()
    tensors = {}
    for (component, path), a in _trained_adapters(pipe).items():
        tensors[f"adapter:{component}:{path}:down"] = a.down
        tensors[f"adapter:{component}:{path}:up"] = a.up
    for k, v in tree_flatten(optimizer.state):
        tensors[f"optimizer:{k}"] = v
    meta = {
        "step": str(step),
        "config": json.dumps(asdict(config)),
        "losses": json.dumps(losses),
        "dataset": dataset,
    }
    write_atomically(
        folder / f"step_{step:06d}.lora.safetensors",
        lambda tmp: save_lora(
            current_lora(pipe, config),
            tmp,
            metadata=_metadata(config, step, n, losses[-1] if losses else None),
        ),
    )
    # the resume file last: "latest" never finds one without its LoRA file
    return write_atomically(
        folder / f"step_{step:06d}.safetensors",
        lambda tmp: mx.save_safetensors(str(tmp), tensors, metadata=meta),
    )


def _find_checkpoint(config: TrainConfig) -> Path:
    if config.resume != "latest":
        path = Path(config.resume)
        if not path.is_file():
            raise LoRAError(f"{path}: checkpoint not found")
        return path
    found = sorted(config.checkpoints().glob("step_*[0-9].safetensors"))
    if not found:
        raise LoRAError(f"{config.checkpoints()}: no checkpoint to resume from")
    return found[-1]


def _checkpoint_meta(path: Path, meta: Dict[str, str]) -> Tuple[int, dict, list, str]:
    try:
        step, saved = int(meta["step"]), json.loads(meta["config"])
        return step, saved, json.loads(meta["losses"]), meta["dataset"]
    except (KeyError, ValueError, TypeError):
        raise LoRAError(
            f"{path}: not a training checkpoint (expected step, config, losses and "
            "dataset in its metadata)"
        ) from None


def load_checkpoint(
    pipe, optimizer, config: TrainConfig, dataset: str
) -> Tuple[int, List[float]]:
    """Restore adapter arrays and optimizer state; returns (step, losses so far)."""
    path = _find_checkpoint(config)
    try:
        tensors, meta = tensorfile.load(path)
    except tensorfile.TensorFileError as exc:
        raise LoRAError(str(exc)) from None
    step, saved, losses, saved_dataset = _checkpoint_meta(path, meta)
    now = asdict(config)
    for key in RESUME_FIELDS:
        if list(np.atleast_1d(saved.get(key))) != list(np.atleast_1d(now[key])):
            raise LoRAError(
                f"{path}: checkpoint has {key}={saved.get(key)!r} but this run has "
                f"{now[key]!r}"
            )
    if saved_dataset != dataset:
        raise LoRAError(
            f"{path}: checkpoint was trained on other images or captions than this dataset"
        )
    if step > config.steps:
        raise LoRAError(
            f"{path}: checkpoint is at step {step}, beyond steps={config.steps}"
        )
    trained = _trained_adapters(pipe)
    expected = {
        f"adapter:{c}:{p}:{part}" for c, p in trained for part in ("down", "up")
    }
    adapter_keys = {k for k in tensors if k.startswith("adapter:")}
    if adapter_keys != expected:
        raise LoRAError(
            f"{path}: checkpoint's adapter layers differ from this model's "
            f"({len(adapter_keys ^ expected)} layer arrays do not match)"
        )
    for (component, p), a in trained.items():
        for part in ("down", "up"):
            k = f"adapter:{component}:{p}:{part}"
            if tensors[k].shape != getattr(a, part).shape:
                raise LoRAError(
                    f"{path}: {k} has shape {tensors[k].shape}, expected "
                    f"{getattr(a, part).shape}"
                )
    optimizer.init(pipe.unet.trainable_parameters())
    opt = {
        k[len("optimizer:") :]: v
        for k, v in tensors.items()
        if k.startswith("optimizer:")
    }
    if set(opt) != {k for k, _ in tree_flatten(optimizer.state)}:
        raise LoRAError(f"{path}: checkpoint's optimizer state does not match")
    for (component, p), a in trained.items():
        for part in ("down", "up"):
            setattr(a, part, tensors[f"adapter:{component}:{p}:{part}"])
    optimizer.state = tree_map_with_path(lambda k, v: opt.get(k, v), optimizer.state)
    return step, losses


@dataclass
class TrainResult:
    """What a run produced."""

    path: Path
    losses: List[float] = field(default_factory=list)
    step_seconds: float = 0.0
    start_step: int = 0


def size_multiple(pipe) -> int:
    """The image sizes this model takes are multiples of this (autoencoder x UNet downsampling)."""
    from ..models import downsampling

    unet_down = sum(1 for b in pipe.unet.down_blocks if "downsample" in b)
    return downsampling(pipe) * 2**unet_down


def train(pipe, dataset_dir: str | Path, config: TrainConfig) -> TrainResult:
    """Train a LoRA on ``dataset_dir`` and save it (kohya safetensors with metadata).

    The output and checkpoints are written whole or not at all; an exception
    or interruption leaves the pipeline without the training adapters.
    """
    multiple = size_multiple(pipe)
    if config.resolution % multiple:
        raise LoRAError(
            f"resolution {config.resolution}: this model needs a multiple of {multiple}"
        )
    examples = scan_dataset(dataset_dir, config.resolution, config.allow_upscale)
    if adapters.state(pipe).fused:
        raise LoRAError("unfuse the pipeline's LoRAs before training")
    paths = synth.target_paths(pipe.unet, config.targets)
    if not paths:
        raise LoRAError(f"no UNet layer matches targets {config.targets}")
    dataset = (
        dataset_fingerprint(examples)
        if config.resume or config.checkpoint_every
        else ""
    )
    latents = encode_images(pipe, examples, config.resolution)
    cond, pooled = encode_text(pipe, [ex.caption for ex in examples])
    res = float(config.resolution)
    time_ids = mx.array([[res, res, 0, 0, res, res]])
    sigmas = pipe.sampler._sigmas
    max_t = len(sigmas) - 1

    lora = init_lora(pipe.unet, paths, config.rank, config.lora_alpha, config.seed)
    adapters.apply(pipe, lora)
    unet = pipe.unet
    bar = None
    try:
        unet.freeze()
        for a in _trained_adapters(pipe).values():
            a.unfreeze(keys=["down", "up"])
        optimizer = optim.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )

        def loss_fn(x0, c, t, noise, text_time):
            s = sigmas[t.astype(mx.int32)][:, None, None, None]
            x_t = (x0 + noise * s) * mx.rsqrt(s * s + 1)
            eps = unet(x_t, t, encoder_x=c, text_time=text_time)
            return nn.losses.mse_loss(eps, noise)

        loss_and_grad = nn.value_and_grad(unet, loss_fn)
        start, losses = 0, []
        if config.resume:
            start, losses = load_checkpoint(pipe, optimizer, config, dataset)
        n = len(examples)
        if config.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=config.steps,
                initial=start,
                desc="lora",
                unit="step",
                file=sys.stderr,
            )
        tic = time.perf_counter()
        for step in range(start, config.steps):
            rng, key = step_keys(config.seed, step)
            idx = mx.array(
                rng.choice(n, config.batch_size, replace=n < config.batch_size)
            )
            k1, k2 = mx.random.split(key)
            x0 = latents[idx]
            t = mx.random.randint(1, max_t + 1, (config.batch_size,), key=k1).astype(
                mx.float32
            )
            noise = mx.random.normal(x0.shape, key=k2)
            text_time = None
            if pooled is not None:
                text_time = (
                    pooled[idx],
                    mx.repeat(time_ids, config.batch_size, axis=0),
                )
            loss, grads = loss_and_grad(x0, cond[idx], t, noise, text_time)
            optimizer.update(unet, grads)
            mx.eval(loss, unet.trainable_parameters(), optimizer.state)
            losses.append(float(loss.item()))
            if not math.isfinite(losses[-1]):
                raise LoRAError(
                    f"step {step + 1}: the loss is {losses[-1]} (not finite); "
                    f"lower the learning rate ({config.learning_rate})"
                )
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update(1)
            done = step + 1
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                save_checkpoint(pipe, optimizer, config, done, losses, n, dataset)
        steps_run = config.steps - start
        seconds = (time.perf_counter() - tic) / max(steps_run, 1)
        out = Path(config.output)
        write_atomically(
            out,
            lambda tmp: save_lora(
                current_lora(pipe, config, out.stem),
                tmp,
                sdxl=hasattr(pipe, "text_encoder_2"),
                metadata=_metadata(
                    config, config.steps, n, losses[-1] if losses else None
                ),
            ),
        )
    finally:
        if bar is not None:
            bar.close()
        if TRAIN_NAME in adapters.state(pipe).adapters:
            adapters.remove(pipe, [TRAIN_NAME])
        unet.unfreeze()
    return TrainResult(out, losses, seconds, start)


def train_lora(pipe, dataset_dir: str | Path, config: TrainConfig) -> Path:
    """Train and save a LoRA; returns the file's path."""
    return train(pipe, dataset_dir, config).path


def dataset_loss(
    pipe, dataset_dir: str | Path, config: TrainConfig, draws: int = 8
) -> float:
    """Mean epsilon loss of the pipe as it is (adapters included) over fixed noise draws."""
    examples = scan_dataset(dataset_dir, config.resolution, config.allow_upscale)
    latents = encode_images(pipe, examples, config.resolution)
    cond, pooled = encode_text(pipe, [ex.caption for ex in examples])
    sigmas = pipe.sampler._sigmas
    res = float(config.resolution)
    total = 0.0
    for d in range(draws):
        k1, k2 = mx.random.split(mx.random.key(10_000 + d))
        n = latents.shape[0]
        t = mx.random.randint(1, len(sigmas), (n,), key=k1).astype(mx.float32)
        noise = mx.random.normal(latents.shape, key=k2)
        s = sigmas[t.astype(mx.int32)][:, None, None, None]
        x_t = (latents + noise * s) * mx.rsqrt(s * s + 1)
        text_time = None
        if pooled is not None:
            text_time = (pooled, mx.array([[res, res, 0, 0, res, res]] * n))
        eps = pipe.unet(x_t, t, encoder_x=cond, text_time=text_time)
        total += float(nn.losses.mse_loss(eps, noise).item())
    return total / draws


# ------------------------------------------------------------------ command line


@dataclass
class BaseModel:
    """A model to train on: its pipeline, native image size (None: unknown) and name."""

    pipe: Any
    resolution: Optional[int]
    name: str


def load_base_model(path: Optional[str | Path] = None) -> BaseModel:
    """The bundled toy model (None), a diffusers-layout folder or a single-file checkpoint."""
    from .. import models, upstream
    from ..models.folder import folder_image_size
    from ..toy import default_model_path

    if path is None:
        path, name = default_model_path(), "pulse_plugin toy model"
    else:
        path = Path(path).expanduser()
        name = path.name
    if not path.exists():
        raise LoRAError(f"{path}: no such model folder or checkpoint file")
    try:
        pipe = models.load_pipeline(path, upstream.load(patched=True))
        size = folder_image_size(path) if path.is_dir() else None
    except models.LOAD_ERRORS as exc:
        raise LoRAError(str(exc)) from None
    return BaseModel(pipe, size, name)


def _number(kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type: a finite int/float above (strict) or at least low."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            bound = f"above {low:g}" if strict else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value

    return parse


def _targets(text: str) -> Tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in TARGET_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(TARGET_KINDS)}, got {text!r}"
        )
    return kinds


def _output(text: str) -> str:
    if Path(text).suffix != ".safetensors":
        raise argparse.ArgumentTypeError(
            f"expected a file name ending in .safetensors, got {text!r}"
        )
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training command's arguments (``pulse train-lora`` and ``python -m``)."""
    p.add_argument(
        "dataset",
        help="folder of image.png + image.txt pairs, or with a metadata.jsonl",
    )
    p.add_argument(
        "--model",
        help="the bundled toy model (default), a diffusers-layout folder or a "
        "single-file checkpoint",
    )
    p.add_argument(
        "-o", "--output", type=_output, default="lora.safetensors", help="LoRA file"
    )
    p.add_argument("--rank", type=_number(int, 1, False), default=4)
    p.add_argument(
        "--alpha",
        type=_number(float, 0, True),
        default=None,
        help="LoRA alpha (default: the rank, scale 1)",
    )
    p.add_argument("--lr", type=_number(float, 0, True), default=1e-4)
    p.add_argument("--weight-decay", type=_number(float, 0, False), default=0.0)
    p.add_argument("--steps", type=_number(int, 1, False), default=500)
    p.add_argument("--batch-size", type=_number(int, 1, False), default=1)
    p.add_argument(
        "--resolution",
        type=_number(int, 8, False),
        default=None,
        help="training image size (default: the model's, e.g. 32 for the toy model)",
    )
    p.add_argument(
        "--allow-upscale",
        action="store_true",
        help="accept images smaller than the resolution (upscaled)",
    )
    p.add_argument("--seed", type=_number(int, 0, False), default=0)
    p.add_argument(
        "--targets",
        type=_targets,
        default=("attn",),
        help=f"comma list of layer kinds: {','.join(TARGET_KINDS)} (default attn)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_number(int, 0, False),
        default=0,
        help="save a resumable checkpoint every N steps (0: none)",
    )
    p.add_argument(
        "--checkpoint-dir", help="checkpoint folder (default: <output>_checkpoints)"
    )
    p.add_argument("--resume", default=None, help="a checkpoint file, or 'latest'")
    p.add_argument(
        "--check-only", action="store_true", help="only validate the dataset"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train from parsed arguments; errors are raised as LoRAError (the caller exits 2)."""
    if args.check_only and args.resolution is not None:
        examples = scan_dataset(args.dataset, args.resolution, args.allow_upscale)
        print(f"{len(examples)} image(s) with captions in {args.dataset}")
        return 0
    base = load_base_model(args.model)
    resolution = args.resolution or base.resolution
    if resolution is None:
        raise LoRAError(
            f"{args.model}: the model does not say its image size (a single file, or a"
            " vae config without sample_size); pass --resolution"
        )
    multiple = size_multiple(base.pipe)
    if resolution % multiple:
        raise LoRAError(
            f"--resolution {resolution}: this model takes multiples of {multiple}"
        )
    examples = scan_dataset(args.dataset, resolution, args.allow_upscale)
    print(
        f"{len(examples)} image(s) with captions in {args.dataset}, "
        f"training at {resolution} px on {base.name}"
    )
    if args.check_only:
        return 0
    config = TrainConfig(
        output=args.output,
        rank=args.rank,
        alpha=args.alpha,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        steps=args.steps,
        batch_size=args.batch_size,
        resolution=resolution,
        seed=args.seed,
        targets=args.targets,
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        base_model=base.name,
        allow_upscale=args.allow_upscale,
        progress=not args.quiet,
    )
    try:
        result = train(base.pipe, args.dataset, config)
    except KeyboardInterrupt:
        done = sorted(config.checkpoints().glob("step_*[0-9].safetensors"))
        hint = f"; resume from {done[-1]} with --resume latest" if done else ""
        raise LoRAError(f"interrupted, {config.output} not written{hint}") from None
    loss = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
    print(f"wrote {result.path} ({config.steps} steps{loss})")
    model = f" --model {args.model}" if args.model else ""
    print(f'use it: pulse generate "PROMPT"{model} --lora {result.path}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m pulse_plugin.lora.train``: the same command as ``pulse train-lora``."""
    p = argparse.ArgumentParser(
        prog="python -m pulse_plugin.lora.train", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:  # LoRAError, DatasetError
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
