"""Memory a generation needs, estimated from the model's shapes, and what the machine has.

The estimate is an upper bound built from the largest arrays a step holds:
the UNet's feature maps at each level (with the 3x3 convolutions' unfolded
inputs), its largest self-attention score matrix (which grows with the
fourth power of the image side), and the autoencoder's decoder at full
resolution. ``check_fits`` refuses a generation that will not fit before it
starts, instead of letting the process die part-way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

FLOAT = 4  # bytes: attention and convolutions are computed in float32 at most
FEATURE_COPIES = 24  # feature maps alive around one level's convolutions and FF
ATTENTION_COPIES = 3  # scores, probabilities, one transform of them
DECODER_COPIES = 4  # unfolded conv input, output, norm temporaries, upsample


class NotEnoughMemory(ValueError):
    """A generation would need more memory than the machine has available."""


def _bytes(module: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def _conv_channels(module: nn.Module) -> int:
    """The widest input or output of module's 2-D convolutions (0 if none)."""
    widths = [
        max(m.weight.shape[0], m.weight.shape[-1])
        for _, m in module.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    return max(widths, default=0)


def _attention_sites(unet) -> Iterable[Tuple[int, int]]:
    """(level, heads) of every transformer block of the UNet (patched or not)."""
    last = len(unet.down_blocks) - 1
    for name, m in unet.named_modules():
        if not hasattr(m, "attn1"):
            continue
        part, _, rest = name.partition(".")
        index = int(rest.split(".")[0]) if rest[:1].isdigit() else 0
        level = {"down_blocks": index, "up_blocks": last - index}.get(part, last)
        yield level, m.attn1.num_heads


def unet_bytes(pipe, latent_size: Tuple[int, int], batch: int) -> int:
    """Peak bytes of one UNet evaluation on batch latents of latent_size."""
    unet = pipe.unet
    h, w = latent_size
    n_levels = len(unet.down_blocks)
    total = _bytes(unet)
    for level, block in enumerate(unet.down_blocks):
        up = unet.up_blocks[n_levels - 1 - level]
        channels = max(_conv_channels(block), _conv_channels(up))
        pixels = (h >> level) * (w >> level)
        total += batch * pixels * channels * FLOAT * FEATURE_COPIES
    worst = 0
    for level, heads in _attention_sites(unet):
        tokens = (h >> level) * (w >> level)
        worst = max(worst, batch * heads * tokens * tokens * FLOAT * ATTENTION_COPIES)
    return total + worst


def decoder_bytes(pipe, latent_size: Tuple[int, int], n_images: int) -> int:
    """Peak bytes of decoding n_images latents of latent_size to pictures."""
    decoder = pipe.autoencoder.decoder
    h, w = latent_size
    total = _bytes(decoder)
    latent_pixels = h * w
    total += latent_pixels * latent_pixels * FLOAT * ATTENTION_COPIES  # mid attention
    per_image = 9 * latent_pixels * _conv_channels(decoder.conv_in) * FLOAT
    for i, block in enumerate(decoder.up_blocks):
        pixels = latent_pixels * 4**i
        per_image += 9 * pixels * _conv_channels(block) * FLOAT
        if "upsample" in block:
            per_image += 9 * 4 * pixels * block.upsample.weight.shape[-1] * FLOAT
    return total + n_images * per_image * DECODER_COPIES


def estimate(
    pipe, latent_size: Tuple[int, int], n_images: int = 1, cfg_weight: float = 7.5
) -> int:
    """Bytes a generation of n_images at latent_size needs beyond the loaded weights."""
    batch = n_images * (2 if cfg_weight > 1 else 1)
    return max(
        unet_bytes(pipe, latent_size, batch),
        decoder_bytes(pipe, latent_size, n_images),
    )


def available() -> Optional[int]:
    """Bytes this process can still allocate, or None where that cannot be read."""
    device = mx.default_device()
    if device.type != mx.DeviceType.cpu:
        info = mx.device_info() if hasattr(mx, "device_info") else {}
        size = info.get("max_recommended_working_set_size") or info.get("memory_size")
        return int(size) - mx.get_active_memory() if size else None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platform
        return None


def gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def check_fits(
    pipe,
    latent_size: Tuple[int, int],
    n_images: int = 1,
    cfg_weight: float = 7.5,
    what: str = "this generation",
    free: Optional[int] = None,
) -> int:
    """The estimate; NotEnoughMemory naming it and what is available when it will not fit."""
    need = estimate(pipe, latent_size, n_images, cfg_weight)
    free = available() if free is None else free
    if free is not None and need > free:
        raise NotEnoughMemory(
            f"{what} needs about {gib(need)} of memory (estimated from the model's "
            f"shapes at latent size {tuple(latent_size)}), but only {gib(free)} is "
            "available; use a smaller size"
        )
    return need
