"""Cost of every technique, side by side: UNet forward with the technique active on its sites.

An SD-2.1-sized UNet (block channels 320/640/1280/1280, random weights shared
by every model in the process), batch 2 (classifier-free guidance: the
techniques edit the conditional row), 77 text tokens, a 32x32 latent by
default (``--latent 64`` for 512 px). Every variant runs paired with plain
upstream (A B A C A D ... in each round, several rounds); the ratio of a
variant is the median over rounds of (variant / the plain run just before it).

Beside each technique, the same technique done the naive way: explicit
softmax attention on every site (self and cross), as a plugin without a
fused path does, and the technique's maths in probability space.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 \\
        python benchmarks/bench_techniques.py [--latent 64] [--rounds 5]
    ... --whole-generation [--gen-size 512 --gen-steps 20]   # seconds per image
    ... --blas                                               # OpenBLAS vs bundled BLAS
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleave, machine, sd21_unet, write_json  # noqa: E402

from pulse_plugin import lora as L  # noqa: E402
from pulse_plugin import tiny, upstream  # noqa: E402
from pulse_plugin.bending.config import BendConfig, BendingSettings  # noqa: E402
from pulse_plugin.bending.processor import Bender  # noqa: E402
from pulse_plugin.capture.recorder import Recorder  # noqa: E402
from pulse_plugin.chain import Call, Next  # noqa: E402
from pulse_plugin.lora import synth  # noqa: E402
from pulse_plugin.masks import as_mask  # noqa: E402
from pulse_plugin.pulse import Pulse  # noqa: E402
from pulse_plugin.techniques.base import active_rows, window_of  # noqa: E402
from pulse_plugin.techniques.injection import Injection  # noqa: E402
from pulse_plugin.techniques.regional import Region, RegionalInjection  # noqa: E402

OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
BASE = "plain upstream"
PROMPT = "a red cat on a blue sea"
BEND_PROMPT = "a romantic (kiss) at (sunset)"
EDIT_PROMPT = "a red dog on a blue sea"  # prompt-to-prompt: one word swapped
GOALS = {
    "patched, switch off": 1.01,
    "identity processors on every site": 1.03,
    "token re-weighting + masking": 1.05,
    "prompt injection, all cross sites": 1.15,
    "regional injection (1 region)": 1.15,
    "regional injection (2 regions)": 1.15,
    "attention capture, all cross sites": 1.15,
    "one bend on one token, all sites": 1.25,
    "LoRA runtime adapters (rank 8)": 1.10,
    "LoRA fused (rank 8)": 1.00,
}


# --------------------------------------------------------------------- models
def make_pipe(sd, unet, full: bool = False):
    """An upstream StableDiffusion object around unet, built like tiny.build_pipeline.

    full=False: a one-layer text encoder of width 1024 (Pulse only needs its
    tokenizer and encoder); full=True: SD 2.1's text encoder and autoencoder sizes.
    """
    pipe = sd.StableDiffusion.__new__(sd.StableDiffusion)
    pipe.dtype = mx.float32
    pipe.diffusion_config = sd.config.DiffusionConfig()
    pipe.sampler = sd.sampler.SimpleEulerSampler(pipe.diffusion_config)
    pipe.tokenizer = tiny.make_tokenizer(sd)
    vocab = len(pipe.tokenizer.vocab)
    if full:
        te_cfg = sd.config.CLIPTextModelConfig()
    else:
        te_cfg = sd.config.CLIPTextModelConfig(
            num_layers=1, model_dims=1024, num_heads=16, vocab_size=vocab
        )
    pipe.text_encoder = sd.clip.CLIPTextModel(te_cfg)
    pipe.autoencoder = (
        sd.vae.Autoencoder(sd.config.AutoencoderConfig()) if full else None
    )
    pipe.unet = unet
    return pipe


class Bench:
    """The models and inputs of the forward benchmark."""

    def __init__(self, latent: int, lora_rank: int = 8):
        self.plain_sd = upstream.load(patched=False)
        self.sd = upstream.load(patched=True)
        mx.random.seed(0)
        self.plain = sd21_unet(self.plain_sd)
        mx.eval(self.plain.parameters())
        self.patched = sd21_unet(self.sd)
        self.patched.update(self.plain.parameters())  # the same arrays, not a copy
        self.pipe = make_pipe(self.sd, self.patched)
        mx.eval(self.pipe.text_encoder.parameters())
        self.hooks = self.patched.hooks
        self.x = mx.random.normal((2, latent, latent, 4))
        self.t = mx.array([500.0, 500.0])
        self.text = mx.random.normal((2, 77, 1024))
        sigma = self.pipe.sampler.sigmas(mx.array(500.0)).item()
        self.step = self.sd.hooks.StepInfo(0, 500.0, sigma, True)
        # injected prompts get 77 tokens too (upstream pads only to the longer prompt)
        self.emb = [mx.random.normal((1, 77, 1024)) for _ in range(2)]
        mx.eval(self.x, self.t, self.text, self.emb)
        self.lora_rank = lora_rank
        self._lora_models()

    def _lora_models(self):
        """Two more plain UNets on the same arrays: runtime adapters, and fused weights."""
        paths = synth.target_paths(self.plain, ["attn", "ff", "proj"])
        tensors = synth.random_tensors(
            self.plain, "unet", paths, rank=self.lora_rank, alpha=self.lora_rank
        )
        self.lora = L.from_tensors(tensors, name="bench")
        mx.eval([(x.down, x.up) for x in self.lora.layers.values()])
        self.lora_layers = len(self.lora.layers)

        class Pipe:
            pass

        self.runtime, self.fused = Pipe(), Pipe()
        for p in (self.runtime, self.fused):
            p.unet = sd21_unet(self.plain_sd)
            p.unet.update(self.plain.parameters())
        L.apply(self.runtime, self.lora)
        L.fuse(self.fused, self.lora)

    # ---- calls
    def forward(self, unet):
        return unet(self.x, self.t, encoder_x=self.text)

    def plain_call(self):
        return self.forward(self.plain)

    def off_call(self):
        self.hooks.clear()
        return self.forward(self.patched)

    @contextmanager
    def processors(self, processor_for):
        """processor_for(kind) registered on every site; hooks cleared afterwards."""
        h = self.hooks
        h.clear()
        h.enabled = True
        for site in h.sites:
            for kind in ("self", "cross"):
                h.register(site, kind, processor_for(kind))
        h.step = self.step
        try:
            yield
        finally:
            h.clear()

    def pulse_call(self, pulse: Pulse, after: Optional[Callable] = None, arrays=None):
        """Forward with the Pulse active at a guided step; after() runs once the output is ready."""

        def fn():
            with pulse:
                self.hooks.step = self.step
                out = self.forward(self.patched)
                mx.eval(out, *(arrays() if arrays else []))
            if after is not None:
                after()
            return out

        return fn


# ---------------------------------------------------------------- naive links
def _identity_transform(probs: mx.array, call: Call) -> mx.array:
    return probs


def force_explicit(call: Call, next: Next) -> mx.array:
    """A link that always takes the explicit softmax path (a plugin without a fused path)."""
    return next(call.with_(transforms=call.transforms + (_identity_transform,)))


def naive_reweight_link(positions, scale: float):
    """Scale the tokens' probabilities and renormalise, explicitly (cond rows)."""

    def transform(probs: mx.array, call: Call) -> mx.array:
        rows = active_rows(call, "cond")
        s = np.ones((probs.shape[0], 1, 1, probs.shape[-1]), np.float32)
        s[rows, :, :, list(positions)] = scale
        p = probs * mx.array(s)
        return p / p.sum(axis=-1, keepdims=True)

    def link(call: Call, next: Next) -> mx.array:
        return next(call.with_(transforms=call.transforms + (transform,)))

    return link


# -------------------------------------------------------------------- variants
def techniques(b: Bench, naive: bool):
    """name -> (Pulse, after, arrays) with the technique on its sites, ours or naive."""
    out = {}

    def pulse():
        p = Pulse(b.pipe, prompt=PROMPT)
        if naive:
            for kind in ("self", "cross"):
                p.add_link("all", kind, force_explicit, name="explicit")
        return p

    window = window_of(None, None, None)
    cross = tuple(b.hooks.sites)

    p = pulse()
    if naive:
        pos_red, pos_blue = p.positions("red"), p.positions("blue")
        p.add_link("all", "cross", naive_reweight_link(pos_red, 2.0), "reweight")
        p.add_link("all", "cross", naive_reweight_link(pos_blue, 0.0), "mask")
    else:
        p.reweight("red", 2.0)
        p.mask_tokens("blue")
    out["token re-weighting + masking"] = (p, None, None)

    p = pulse()
    p.add(
        Injection(
            cross, "cross", window, prompt="a dog", embedding=b.emb[0], weight=0.8
        )
    )
    out["prompt injection, all cross sites"] = (p, None, None)

    for n, masks in ((1, ["left"]), (2, ["left", "right"])):
        p = pulse()
        regions = tuple(
            Region(f"region {i}", b.emb[i], as_mask(m), 1.0)
            for i, m in enumerate(masks)
        )
        p.add(RegionalInjection(cross, "cross", window, regions=regions))
        out[f"regional injection ({n} region{'s' if n > 1 else ''})"] = (p, None, None)

    p = pulse()
    size = tuple(b.x.shape[1:3])
    rec = Recorder(b.pipe, size=size).attach(p)

    def after_capture(rec=rec):
        rec.flush()
        rec.steps.clear()

    out["attention capture, all cross sites"] = (p, after_capture, rec.arrays)

    p = pulse()
    settings = BendingSettings(
        [BendConfig(token="kiss", mode="blur")], apply_to_output=True, record=False
    )
    bender = Bender(b.pipe, BEND_PROMPT, settings).attach(p)
    out["one bend on one token, all sites"] = (p, bender.flush, bender.link.arrays)
    return out


def variants(b: Bench, only: Optional[List[str]] = None):
    """(ours, naive): name -> zero-argument callables returning the UNet output."""
    ours: Dict[str, Callable] = {}
    naive: Dict[str, Callable] = {}
    ours["patched, switch off"] = b.off_call

    def identity(kind):
        return lambda a, x, m, mask, meta: a(x, m, m, mask)

    def with_processors(processor_for):
        def fn():
            with b.processors(processor_for):
                return b.forward(b.patched)

        return fn

    ours["identity processors on every site"] = with_processors(identity)
    naive["identity processors on every site"] = b.pulse_call(
        _explicit_everywhere(b.pipe)
    )
    for name, (p, after, arrays) in techniques(b, naive=False).items():
        ours[name] = b.pulse_call(p, after, arrays)
    for name, (p, after, arrays) in techniques(b, naive=True).items():
        naive[name] = b.pulse_call(p, after, arrays)
    ours["LoRA runtime adapters (rank 8)"] = lambda: b.forward(b.runtime.unet)
    ours["LoRA fused (rank 8)"] = lambda: b.forward(b.fused.unet)
    if only:
        keep = [n for n in ours if any(o in n for o in only)]
        ours = {n: ours[n] for n in keep}
        naive = {n: naive[n] for n in keep if n in naive}
    return ours, naive


def _explicit_everywhere(pipe) -> Pulse:
    p = Pulse(pipe)
    for kind in ("self", "cross"):
        p.add_link("all", kind, force_explicit, name="explicit")
    return p


# ---------------------------------------------------------------------- timing
def with_peak(fn: Callable, peaks: List[float]) -> Callable:
    """fn, recording MLX's peak memory above the memory in use before the call."""

    def wrapped():
        mx.eval(mx.array(0))
        before = mx.get_active_memory()
        mx.reset_peak_memory()
        out = fn()
        mx.eval(out)
        peaks.append(mx.get_peak_memory() - before)
        return out

    return wrapped


def run_forward(args) -> dict:
    b = Bench(args.latent)
    ours, naive = variants(b, args.only)
    plain = b.plain_call
    peaks: Dict[str, List[float]] = {}
    paired: Dict[str, Callable] = {}
    names = []
    for group, fns in (("", ours), ("naive: ", naive)):
        for name, fn in fns.items():
            key = group + name
            names.append(key)
            peaks[key] = []
            peaks[key + " / base"] = []
            paired[key + " / base"] = with_peak(plain, peaks[key + " / base"])
            paired[key] = with_peak(fn, peaks[key])
    print(
        f"{len(names)} variants, each paired with plain upstream, {args.rounds} round(s) "
        f"of {2 * len(names)} forwards after one warm-up round",
        flush=True,
    )
    start = time.perf_counter()
    for key in names:  # warm-up: every variant once (caches, buffers)
        mx.eval(paired[key]())
    mx.eval(plain())
    for p in peaks.values():
        p.clear()
    print(f"warm-up {time.perf_counter() - start:.0f} s", flush=True)
    samples: Dict[str, List[float]] = {k: [] for k in paired}
    result = {}
    for r in range(args.rounds):  # one round at a time: partial results survive a kill
        _, got = interleave(paired, rounds=1, warmup=0)
        for k, ts in got.items():
            samples[k].extend(ts)
        result = summarise(args, b, names, samples, peaks, r + 1)
        write_json(Path(args.json), {"forward": result})
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    return result


def summarise(args, b: Bench, names, samples, peaks, rounds: int) -> dict:
    medians = {k: statistics.median(ts) for k, ts in samples.items()}
    base_all = [t for k, ts in samples.items() if k.endswith(" / base") for t in ts]
    base_peak = max(p for k, ps in peaks.items() if k.endswith(" / base") for p in ps)
    rows = {}
    for key in names:
        ratios = [v / a for v, a in zip(samples[key], samples[key + " / base"])]
        rows[key] = {
            "median_s": medians[key],
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "peak_extra_mib": (max(peaks[key]) - base_peak) / 2**20,
            "samples": samples[key],
            "paired_base_samples": samples[key + " / base"],
        }
    return {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "setting": (
            f"UNet forward, SD-2.1 size, batch 2 (CFG), 77 tokens, latent "
            f"{args.latent}x{args.latent}, {rounds} round(s)"
        ),
        "latent": args.latent,
        "rounds": rounds,
        "base_median_s": statistics.median(base_all),
        "base_peak_mib": base_peak / 2**20,
        "lora": {"rank": b.lora_rank, "layers": b.lora_layers},
        "variants": rows,
    }


def report(result: dict) -> str:
    rows = result["variants"]
    lines = [
        f"{result['setting']}; {result['machine']}; load average at the end "
        + "/".join(f"{x:.2f}" for x in result["load_average"]),
        "",
        "| variant | median s | ratio | goal | naive ratio | peak extra MiB (ours / naive) |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
        f"| {BASE} | {result['base_median_s']:.3f} | 1.000 | | | "
        f"({result['base_peak_mib']:.0f} MiB peak) |",
    ]
    for name, r in rows.items():
        if name.startswith("naive: "):
            continue
        goal = GOALS.get(name)
        mark = ""
        if goal is not None:
            ok = r["ratio"] <= goal if goal > 1 else r["ratio"] <= 1.005
            mark = f"<= {goal:.2f} " + ("ok" if ok else "MISSED")
        nv = rows.get("naive: " + name)
        naive_ratio = f"{nv['ratio']:.3f}" if nv else "—"
        mem = f"{r['peak_extra_mib']:.0f}" + (
            f" / {nv['peak_extra_mib']:.0f}" if nv else ""
        )
        lines.append(
            f"| {name} | {r['median_s']:.3f} | {r['ratio']:.3f} | {mark} | "
            f"{naive_ratio} | {mem} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------- whole generation
def typical_pulse(pipe) -> Pulse:
    """A typical technique set: injection on mid, re-weighting, one regional prompt."""
    p = Pulse(pipe, prompt=PROMPT)
    p.inject("mid", "a golden dragon", weight=0.8, sigma_start=15.0, sigma_end=2.0)
    p.reweight("red", 2.0)
    p.regional("a snowy mountain", "left", 1.0, block="all")
    return p


def run_whole_generation(args) -> dict:
    plain_sd, sd = upstream.load(patched=False), upstream.load(patched=True)
    mx.random.seed(0)
    pipe = make_pipe(sd, sd21_unet(sd), full=True)
    pipe.ensure_models_are_loaded()
    plain = make_pipe(plain_sd, sd21_unet(plain_sd), full=True)
    for name in ("unet", "text_encoder", "autoencoder"):
        getattr(plain, name).update(getattr(pipe, name).parameters())
    latent = args.gen_size // 8
    pulse = typical_pulse(pipe)

    def image(p, use_pulse):
        def fn():
            def gen():
                x = None
                for x in p.generate_latents(
                    PROMPT,
                    num_steps=args.gen_steps,
                    latent_size=(latent, latent),
                    seed=0,
                ):
                    mx.eval(x)
                return p.decode(x)

            if not use_pulse:
                return gen()
            with pulse:
                out = gen()
                mx.eval(out)
            return out

        return fn

    pag = Pulse(pipe, prompt=PROMPT)
    pag.perturbed_attention(3.0, block="mid")

    def guided():
        with pag:
            return image(pipe, False)()

    def plain_pair():
        image(plain, False)()
        return image(plain, False)()

    def edited_pair():
        with Pulse(pipe) as edit:
            e = edit.prompt_to_prompt(
                PROMPT, EDIT_PROMPT, mode="refine", self_window=(None, None)
            )
            x = None
            for x in pipe.generate_latents(
                e.source,
                n_images=2,
                num_steps=args.gen_steps,
                latent_size=(latent, latent),
                seed=0,
            ):
                mx.eval(x)
            out = pipe.decode(x)
            mx.eval(out)
        return out

    variants = {
        BASE: image(plain, False),
        "typical technique set": image(pipe, True),
        "perturbed-attention guidance (mid, s=3)": guided,
        "two plain images": plain_pair,
        "prompt-to-prompt: source and edit in one call": edited_pair,
    }
    medians, samples = interleave(variants, rounds=args.gen_rounds, warmup=1)
    return {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "setting": (
            f"{args.gen_size}x{args.gen_size}, {args.gen_steps} steps, SD-2.1-sized UNet, "
            f"text encoder and autoencoder (random weights), batch 2 (CFG), "
            f"{args.gen_rounds} interleaved round(s) after one warm-up image each"
        ),
        "typical": "inject('mid', w=0.8, sigma 15..2) + reweight('red', 2.0, all) + "
        "regional('left', all)",
        "seconds_per_image": medians,
        "ratio": medians["typical technique set"] / medians[BASE],
        "pag_ratio": medians["perturbed-attention guidance (mid, s=3)"] / medians[BASE],
        "edit_ratio": medians["prompt-to-prompt: source and edit in one call"]
        / medians["two plain images"],
        "samples": samples,
    }


# ------------------------------------------------------------------------ BLAS
def blas_child(latent: int) -> None:
    """Fixed workload, printed as JSON: 2048^2 float32 matmul and one UNet forward."""
    maps = Path("/proc/self/maps").read_text()
    a = mx.random.normal((2048, 2048))
    b = mx.random.normal((2048, 2048))
    mx.eval(a, b, a @ b)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        mx.eval(a @ b)
        times.append(time.perf_counter() - t)
    matmul = statistics.median(times)
    sd = upstream.load(patched=False)
    mx.random.seed(0)
    unet = sd21_unet(sd)
    mx.eval(unet.parameters())
    x = mx.random.normal((2, latent, latent, 4))
    text = mx.random.normal((2, 77, 1024))
    t_ = mx.array([500.0, 500.0])
    mx.eval(unet(x, t_, encoder_x=text))  # warm-up
    t = time.perf_counter()
    mx.eval(unet(x, t_, encoder_x=text))
    unet_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "openblas_loaded": "libopenblas" in maps,
                "matmul_s": matmul,
                "matmul_gflops": 2 * 2048**3 / matmul / 1e9,
                "unet_s": unet_s,
            }
        )
    )


def run_blas(args) -> dict:
    out = {}
    for label, preload in (("OpenBLAS (LD_PRELOAD)", True), ("bundled BLAS", False)):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        if preload:
            env["LD_PRELOAD"] = OPENBLAS
        cmd = [
            sys.executable,
            __file__,
            "--blas-child",
            "--blas-latent",
            str(args.blas_latent),
        ]
        print(f"BLAS: running {label} ...", flush=True)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    fast, slow = out["OpenBLAS (LD_PRELOAD)"], out["bundled BLAS"]
    return {
        "machine": machine(),
        "setting": (
            f"2048x2048 float32 matmul (median of 3) and one SD-2.1-sized UNet forward, "
            f"batch 2, 77 tokens, latent {args.blas_latent}x{args.blas_latent} (after one warm-up)"
        ),
        "runs": out,
        "matmul_ratio": slow["matmul_s"] / fast["matmul_s"],
        "unet_ratio": slow["unet_s"] / fast["unet_s"],
    }


# ------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--latent", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="paired rounds (default 5)"
    )
    parser.add_argument(
        "--json",
        default="benchmarks/results/techniques.json",
        help="where to write the results",
    )
    parser.add_argument(
        "--only", nargs="*", help="run only variants whose name contains one of these"
    )
    parser.add_argument(
        "--skip-forward", action="store_true", help="skip the UNet-forward table"
    )
    parser.add_argument(
        "--whole-generation",
        action="store_true",
        help="also time whole images (default 512x512, 20 steps: minutes per image)",
    )
    parser.add_argument(
        "--gen-size", type=int, default=512, help="image size in pixels"
    )
    parser.add_argument("--gen-steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--gen-rounds", type=int, default=1, help="interleaved rounds")
    parser.add_argument(
        "--blas",
        action="store_true",
        help="also compare OpenBLAS (LD_PRELOAD) with the wheel's bundled BLAS",
    )
    parser.add_argument(
        "--blas-latent",
        type=int,
        default=16,
        help="latent of the BLAS comparison's UNet forward (the bundled BLAS is slow)",
    )
    parser.add_argument("--blas-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.blas_child:
        blas_child(args.blas_latent)
        return 0
    result = {}
    if not args.skip_forward:
        result["forward"] = run_forward(args)
        print(report(result["forward"]), flush=True)
    if args.whole_generation:
        gen = run_whole_generation(args)
        result["whole_generation"] = gen
        print(
            f"\nwhole generation, {gen['setting']}; typical set: {gen['typical']}\n"
            + "\n".join(
                f"  {k}: {v:.1f} s/image" for k, v in gen["seconds_per_image"].items()
            )
            + f"\n  ratio (typical set): {gen['ratio']:.3f}"
            + f"\n  ratio (PAG / plain): {gen['pag_ratio']:.3f}"
            + f"\n  ratio (prompt-to-prompt / two plain images): {gen['edit_ratio']:.3f}",
            flush=True,
        )
    if args.blas:
        blas = run_blas(args)
        result["blas"] = blas
        print(
            f"\nBLAS, {blas['setting']}\n"
            + "\n".join(
                f"  {k}: matmul {v['matmul_s']:.3f} s ({v['matmul_gflops']:.0f} GFLOP/s), "
                f"UNet {v['unet_s']:.2f} s, OpenBLAS loaded: {v['openblas_loaded']}"
                for k, v in blas["runs"].items()
            )
            + f"\n  bundled / OpenBLAS: matmul {blas['matmul_ratio']:.1f}x, "
            f"UNet forward {blas['unet_ratio']:.1f}x",
            flush=True,
        )
    write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
