"""LoRA benchmark: load / apply / fuse time and peak memory of a rank-8 LoRA on an
SD-2.1-sized UNet (random weights), and training step time on a tiny model.

Run: LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/bench_lora.py
(``--skip-large`` runs only the tiny training part).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse_plugin import lora as L  # noqa: E402
from pulse_plugin import tiny, upstream  # noqa: E402
from pulse_plugin.lora import synth  # noqa: E402
from pulse_plugin.lora import train as T  # noqa: E402


def rss_mib() -> float:
    """Peak resident set size of this process (MiB, Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_large(rows, rank: int = 8):
    sd = upstream.load(patched=False)
    cfg = sd.config.UNetConfig(
        block_out_channels=(320, 640, 1280, 1280),
        num_attention_heads=(5, 10, 20, 20),
        cross_attention_dim=(1024,) * 4,
    )
    unet = sd.unet.UNetModel(cfg)
    mx.eval(unet.parameters())
    n_params = sum(v.size for _, v in tree_flatten(unet.parameters()))

    class Pipe:  # only the UNet is needed
        pass

    pipe = Pipe()
    pipe.unet = unet
    paths = synth.target_paths(unet, ["attn", "ff", "proj"])
    tensors = synth.random_tensors(unet, "unet", paths, rank=rank, alpha=rank)
    mx.eval(tensors)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "sd21_rank8.safetensors"
        mx.save_safetensors(str(f), tensors)
        size = f.stat().st_size / 2**20
        model_mem = mx.get_active_memory()
        mx.reset_peak_memory()
        lora, t_load = timed(lambda: L.load_lora(f))
        mx.eval([(x.down, x.up) for x in lora.layers.values()])
        load_peak = mx.get_peak_memory() - model_mem
        _, t_apply = timed(lambda: L.apply(pipe, lora))
        L.remove(pipe)
        mx.reset_peak_memory()
        _, t_fuse = timed(lambda: L.fuse(pipe, lora))
        fuse_peak = mx.get_peak_memory()
        _, t_unfuse = timed(lambda: L.unfuse(pipe))
    rows.append(("UNet params (SD-2.1 size)", f"{n_params / 1e6:.0f} M"))
    rows.append(
        (f"rank-{rank} LoRA: layers / file", f"{len(lora.layers)} / {size:.1f} MiB")
    )
    rows.append(("load_lora (read+validate+map)", f"{t_load:.3f} s"))
    rows.append(("apply (runtime adapters)", f"{t_apply * 1e3:.1f} ms"))
    rows.append(("fuse / unfuse", f"{t_fuse:.3f} s / {t_unfuse * 1e3:.2f} ms"))
    rows.append(("MLX memory of the UNet", f"{model_mem / 2**20:.0f} MiB"))
    rows.append(("MLX peak above the UNet: load", f"{load_peak / 2**20:.0f} MiB"))
    rows.append(
        ("MLX peak above the UNet: fuse", f"{(fuse_peak - model_mem) / 2**20:.0f} MiB")
    )


def bench_train(rows, steps: int = 12):
    sd = upstream.load(patched=False)
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(8):
            from PIL import Image

            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                data / f"{i}.png"
            )
            (data / f"{i}.txt").write_text("a red square painting")
        for batch in (1, 8):
            pipe = tiny.build_pipeline(sd)
            cfg = T.TrainConfig(
                output=str(Path(d) / "out.safetensors"),
                rank=4,
                steps=steps,
                batch_size=batch,
                resolution=32,
                learning_rate=1e-3,
                targets=("attn", "ff"),
                progress=False,
            )
            res = T.train(pipe, data, cfg)
            rows.append(
                (
                    f"train step, tiny UNet, batch {batch}, 32 px",
                    f"{res.step_seconds * 1e3:.0f} ms",
                )
            )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-large", action="store_true")
    args = p.parse_args()
    rows = []
    if not args.skip_large:
        bench_large(rows)
    bench_train(rows)
    rows.append(("process peak RSS", f"{rss_mib():.0f} MiB"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)} | value")
    print("-" * width + "-|-" + "-" * 24)
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


if __name__ == "__main__":
    main()
