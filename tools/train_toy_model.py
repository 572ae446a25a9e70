#!/usr/bin/env python
"""Rebuild the toy text-to-image model (pulse_plugin/toy/model) from scratch.

Deterministic for a given seed: the dataset, the initial weights, the batches
and the noise all derive from it. Writes a diffusers-layout folder and a
training_log.json next to the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse_plugin import upstream  # noqa: E402
from pulse_plugin.toy import default_model_path, folder, train  # noqa: E402


def main(argv=None) -> int:
    defaults = train.ToyConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=default_model_path())
    parser.add_argument("--images", type=int, default=defaults.n_images)
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--batch", type=int, default=defaults.unet_batch)
    parser.add_argument("--lr", type=float, default=defaults.unet_lr)
    parser.add_argument(
        "--loss-weight",
        choices=("x0clip", "v", "eps"),
        default=defaults.loss_weight,
        help="weight of the epsilon error over noise levels (see train.py)",
    )
    parser.add_argument(
        "--text-layers",
        type=int,
        default=defaults.text_layers,
        help="transformer layers of the text encoder (0: token + position only)",
    )
    parser.add_argument(
        "--partial-captions",
        type=float,
        default=defaults.partial_captions,
        help="share of single-object captions shortened (no colour/position)",
    )
    parser.add_argument(
        "--unet-norm-groups",
        type=int,
        default=defaults.unet_norm_groups,
        help="GroupNorm groups of the UNet (run 6: 8, which upstream's "
        "Transformer2D ignores; diffusers does not)",
    )
    parser.add_argument("--weight-clip", type=float, default=defaults.weight_clip)
    parser.add_argument(
        "--vae-from",
        type=Path,
        help="reuse the autoencoder of an earlier run (same seed) instead of stage 1",
    )
    parser.add_argument(
        "--weights-from",
        type=Path,
        help="start the UNet and text encoder from an earlier run's weights",
    )
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    cfg = train.ToyConfig(
        seed=args.seed,
        n_images=args.images,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        unet_batch=args.batch,
        unet_lr=args.lr,
        loss_weight=args.loss_weight,
        weight_clip=args.weight_clip,
        text_layers=args.text_layers,
        partial_captions=args.partial_captions,
        warmup=args.warmup,
        unet_norm_groups=args.unet_norm_groups,
    )
    from tqdm import tqdm

    bars = {}

    def report(stage: str, step: int, loss: float) -> None:
        if args.quiet:
            return
        if stage not in bars:
            total = cfg.vae_steps if stage == "vae" else cfg.unet_steps
            bars[stage] = tqdm(total=total, desc=stage, mininterval=5, file=sys.stdout)
        bar = bars[stage]
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step + 1 == bar.total:
            bar.close()

    start = time.time()
    sd = upstream.load(patched=True)
    pipe, configs, log = train.train(sd, cfg, report, args.vae_from, args.weights_from)
    folder.save_pipeline(
        pipe, args.out, configs.unet, configs.text, configs.vae, cfg.image_size
    )

    def every(values, n=10):
        return [round(v, 5) for v in values[::n]] + [round(values[-1], 5)]

    summary = dict(
        config=log["config"],
        params=log["params"],
        scaling_factor=log["scaling_factor"],
        vae_from=None if args.vae_from is None else str(args.vae_from),
        weights_from=None if args.weights_from is None else str(args.weights_from),
        seconds=dict(
            vae=round(log["vae_seconds"], 1),
            unet=round(log["unet_seconds"], 1),
            total=round(time.time() - start, 1),
        ),
        vae_loss_every_10=every(log["vae_losses"]),
        unet_loss_every_10=every(log["unet_losses"]),
        final=dict(
            vae_mse_last50=float(np.mean(log["vae_losses"][-50:])),
            unet_loss_last50=float(np.mean(log["unet_losses"][-50:])),
        ),
    )
    (Path(args.out) / "training_log.json").write_text(
        json.dumps(summary, indent=1) + "\n"
    )
    print(json.dumps(dict(final=summary["final"], seconds=summary["seconds"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
