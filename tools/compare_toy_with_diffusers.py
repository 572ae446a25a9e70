#!/usr/bin/env python
"""Check that diffusers computes the same model from the toy folder as the project does.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 \\
        .venv/bin/python tools/compare_toy_with_diffusers.py [--model FOLDER]

Needs a second Python with torch, diffusers and transformers (default
/work/refenv/bin/python, ``--refenv``); CI does not run it. The project's side
(upstream's MLX classes through ``pulse_plugin.models.load_pipeline``) and
diffusers' side (``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``,
``CLIPTokenizer`` and ``StableDiffusionPipeline``, each ``from_pretrained`` on the
folder as it is) get the same seeded inputs; the script prints each part's max
relative difference (max |ours - diffusers| / max |diffusers|), whether the
tokenizers give the same ids, and what diffusers' own pipeline draws for a few
held-out captions (classified by ``pulse_plugin.toy.quality``). The same file
is the diffusers side when run with ``--diffusers-side DIR``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REFENV = "/work/refenv/bin/python"
PROMPTS = (
    "a red circle on the left",
    "a blue square at the top",
    "a yellow triangle on the right and a green circle at the bottom",
)
TIMESTEPS = (999.0, 500.0, 37.5)
PIPELINE_STEPS = 20
PIPELINE_CFG = 5.0
TOLERANCE = 1e-4


def max_relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| over max |theirs|."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs {theirs.shape}")
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def make_inputs(folder: Path, seed: int = 0) -> dict:
    """Seeded inputs in NCHW (diffusers' layout) and the captions' token ids."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    rng = np.random.default_rng(seed)
    n, c, s = len(TIMESTEPS), unet["in_channels"], unet["sample_size"]
    size = vae["sample_size"]
    return dict(
        latents=rng.standard_normal((n, c, s, s)).astype(np.float32),
        timesteps=np.array(TIMESTEPS, np.float32),
        images=rng.uniform(-1, 1, (2, vae["in_channels"], size, size)).astype(
            np.float32
        ),
    )


# ------------------------------------------------------------ diffusers side


def diffusers_side(work: Path) -> None:
    """Run diffusers on work/inputs.npz + work/request.json; write work/diffusers.npz."""
    import torch
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    request = json.loads((work / "request.json").read_text())
    folder = Path(request["folder"])
    inputs = dict(np.load(work / "inputs.npz"))
    out = {}
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    for i, prompt in enumerate(request["prompts"]):
        ids = tokenizer(prompt).input_ids
        out[f"ids {i}"] = np.array(ids, np.int64)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    with torch.no_grad():
        for i in range(len(request["prompts"])):
            ids = torch.tensor(inputs[f"ids {i}"][None])
            out[f"text {i}"] = text(ids).last_hidden_state.numpy()
        cond = torch.tensor(inputs["ids 0"][None]).repeat(len(inputs["timesteps"]), 1)
        states = text(cond).last_hidden_state
        out["unet"] = unet(
            torch.tensor(inputs["latents"]),
            torch.tensor(inputs["timesteps"]),
            encoder_hidden_states=states,
        ).sample.numpy()
        out["decode"] = vae.decode(torch.tensor(inputs["latents"])).sample.numpy()
        out["encode"] = vae.encode(
            torch.tensor(inputs["images"])
        ).latent_dist.mean.numpy()
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        for i, prompt in enumerate(request["pipeline_prompts"]):
            result = pipe(
                prompt,
                num_inference_steps=request["steps"],
                guidance_scale=request["cfg"],
                num_images_per_prompt=request["n"],
                generator=torch.Generator().manual_seed(i),
                output_type="np",
            )
            out[f"pipeline {i}"] = np.asarray(result.images, np.float32)
    np.savez(work / "diffusers.npz", **out)


# ------------------------------------------------------------ project side


def project_side(folder: Path, inputs: dict, prompts) -> dict:
    """The same forwards through upstream's MLX classes loaded by the project."""
    import mlx.core as mx

    from pulse_plugin.models import load_pipeline

    pipe = load_pipeline(folder)
    out = {}
    for i, prompt in enumerate(prompts):
        ids = np.array(pipe.tokenizer.tokenize(prompt), np.int64)
        out[f"ids {i}"] = ids
        states = pipe.text_encoder(mx.array(ids[None])).last_hidden_state
        out[f"text {i}"] = np.array(states)
    ids = mx.array(out["ids 0"][None])
    n = len(inputs["timesteps"])
    states = mx.repeat(pipe.text_encoder(ids).last_hidden_state, n, axis=0)
    nhwc = mx.array(inputs["latents"].transpose(0, 2, 3, 1))
    eps = pipe.unet(nhwc, mx.array(inputs["timesteps"]), encoder_x=states)
    out["unet"] = np.array(eps).transpose(0, 3, 1, 2)
    out["decode"] = np.array(pipe.autoencoder.decode(nhwc)).transpose(0, 3, 1, 2)
    mean, _ = pipe.autoencoder.encode(mx.array(inputs["images"].transpose(0, 2, 3, 1)))
    out["encode"] = np.array(mean).transpose(0, 3, 1, 2)
    return out


def pipeline_scores(images: np.ndarray, caption_objects) -> tuple:
    """(colour right, position right) counts for diffusers' images of one caption."""
    from pulse_plugin.toy import quality

    colour = position = 0
    for image in images:
        found = quality.classify(image)
        colour += found.colour == caption_objects.colour
        position += quality.position_ok(
            caption_objects.position, found.centroid, image.shape[0]
        )
    return colour, position


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="model folder (default: the toy)")
    p.add_argument("--refenv", default=REFENV, help="python with torch + diffusers")
    p.add_argument("--n", type=int, default=8, help="pipeline images per caption")
    p.add_argument("--diffusers-side", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.diffusers_side is not None:
        diffusers_side(args.diffusers_side)
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pulse_plugin.toy import default_model_path, shapes

    folder = (args.model or default_model_path()).resolve()
    held_out = shapes.held_out_singles()[:4]
    inputs = make_inputs(folder)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours = project_side(folder, inputs, PROMPTS)
        for i in range(len(PROMPTS)):
            inputs[f"ids {i}"] = ours[f"ids {i}"]
        np.savez(work / "inputs.npz", **inputs)
        request = dict(
            folder=str(folder),
            prompts=list(PROMPTS),
            pipeline_prompts=[shapes.caption([o]) for o in held_out],
            steps=PIPELINE_STEPS,
            cfg=PIPELINE_CFG,
            n=args.n,
        )
        (work / "request.json").write_text(json.dumps(request))
        subprocess.run(
            [args.refenv, __file__, "--diffusers-side", str(work)], check=True
        )
        theirs = dict(np.load(work / "diffusers.npz"))

    print(f"{folder} against diffusers (float32)\n")
    print("| part | inputs | max relative difference |")
    print("| --- | --- | --- |")
    worst = 0.0
    ids_equal = all(
        np.array_equal(ours[f"ids {i}"], theirs[f"ids {i}"])
        for i in range(len(PROMPTS))
    )
    rows = [
        ("CLIPTextModel", f"{len(PROMPTS)} captions", [f"text {i}" for i in range(3)]),
        ("UNet2DConditionModel", f"t = {TIMESTEPS}, 8x8 latents", ["unet"]),
        ("AutoencoderKL decode", f"{len(TIMESTEPS)} random latents", ["decode"]),
        ("AutoencoderKL encode (mean)", "2 random images", ["encode"]),
    ]
    for name, what, keys in rows:
        diff = max(max_relative_difference(ours[k], theirs[k]) for k in keys)
        worst = max(worst, diff)
        print(f"| {name} | {what} | {diff:.2e} |")
    print(f"\ntokenizer ids equal (CLIPTokenizer vs upstream's): {ids_equal}")
    print(
        f"\nStableDiffusionPipeline.from_pretrained(folder): {PIPELINE_STEPS} steps, "
        f"CFG {PIPELINE_CFG}, {args.n} images per caption (diffusers' own Euler"
        " schedule and 77-token padding)\n"
    )
    print("| caption | colour right | position right |")
    print("| --- | --- | --- |")
    for i, obj in enumerate(held_out):
        colour, position = pipeline_scores(theirs[f"pipeline {i}"], obj)
        print(
            f"| {request['pipeline_prompts'][i]} | {colour}/{args.n} | {position}/{args.n} |"
        )
    ok = ids_equal and worst <= TOLERANCE
    print(f"\nworst {worst:.2e} (tolerance {TOLERANCE:g}): {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
