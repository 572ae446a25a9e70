"""Capture outputs: per-token overlays, a grid, an evolution GIF, metadata and an index.

``capture_run(pipe, prompt, out_dir)`` generates one image while recording the
real cross-attention, then writes a per-run folder under ``out_dir``. Pillow only.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np
from PIL import Image, ImageDraw

from .. import tokens
from ..bending import transforms as T
from ..bending.config import BendConfig, BendingSettings
from ..bending.processor import Bender, BendRecord, parse_prompt
from ..sampling import decode, default_latent_size, final_latents
from .recorder import Recorder, StepMaps

BAR_LABELS = ("low", "high attention")


@dataclass
class WordMap:
    """A word of the prompt and its token positions (BOS = 0)."""

    text: str
    positions: Tuple[int, ...]


@dataclass
class CaptureResult:
    """What capture_run made: the image, the recorder and the files it wrote."""

    folder: Path
    image: np.ndarray  # (H, W, 3) in [0, 1]
    recorder: Recorder
    words: List[WordMap]
    metadata: Dict
    files: List[str] = field(default_factory=list)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB in the perceptual colour map (viridis)."""
    from ..colormap import colormap as perceptual

    return perceptual(values)


def with_bar(img: Image.Image) -> Image.Image:
    """img with the colour map's bar under it (each map is scaled to its own min..max)."""
    from ..colormap import with_colour_bar

    return with_colour_bar(img, BAR_LABELS)


def normalise(
    m: np.ndarray, limits: Optional[Tuple[float, float]] = None
) -> np.ndarray:
    """Scale a map to [0, 1] from its own (or the given) min and max; constant -> zeros."""
    lo, hi = limits or (float(m.min()), float(m.max()))
    return np.zeros_like(m) if hi - lo <= 1e-12 else np.clip((m - lo) / (hi - lo), 0, 1)


def overlay(
    image: np.ndarray,
    m: np.ndarray,
    alpha: float = 0.55,
    limits: Optional[Tuple[float, float]] = None,
) -> Image.Image:
    """A heat map of m resized onto image (H, W, 3 in [0, 1]) with opacity alpha."""
    h, w = image.shape[:2]
    heat = Image.fromarray(colormap(normalise(m, limits))).resize(
        (w, h), Image.BILINEAR
    )
    base = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    return Image.blend(base, heat, alpha)


def labelled(img: Image.Image, text: str, scale: int = 1) -> Image.Image:
    """img (enlarged by scale) with a caption bar under it."""
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    out = Image.new("RGB", (img.width, img.height + 14), "white")
    out.paste(img, (0, 0))
    ImageDraw.Draw(out).text((2, img.height + 1), text[:40], fill="black")
    return out


def grid(tiles: Sequence[Image.Image], columns: int = 4) -> Image.Image:
    """Tiles of equal size in rows of columns."""
    w, h = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    out = Image.new("RGB", (w * min(columns, len(tiles)), h * rows), "white")
    for i, t in enumerate(tiles):
        out.paste(t, ((i % columns) * w, (i // columns) * h))
    return out


def noise_percent(timestep: Optional[float], max_time: float) -> Optional[int]:
    """The scheduler's time as noise remaining, in percent (100 = pure noise)."""
    return None if timestep is None else int(round(100 * timestep / max_time))


def word_maps(pipe, prompt: str) -> List[WordMap]:
    """The prompt's words and their token positions, from upstream's tokenizer."""
    tok = getattr(pipe, "tokenizer", None) or pipe.tokenizer_1
    return [WordMap(w.text, w.positions) for w in tokens.words(tok, prompt)]


def word_map(maps: np.ndarray, word: WordMap) -> np.ndarray:
    """A word's map: the sum of its tokens' maps."""
    return maps[list(word.positions)].sum(0)


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "run"


def new_folder(out_dir: Path, prompt: str) -> Path:
    """A fresh per-run folder out_dir/<time>_<prompt slug>[_k]."""
    stem = time.strftime("%Y%m%d-%H%M%S") + "_" + slug(prompt)
    folder, k = out_dir / stem, 1
    while folder.exists():
        k += 1
        folder = out_dir / f"{stem}_{k}"
    folder.mkdir(parents=True)
    return folder


def evolution_frames(
    image: np.ndarray,
    steps: Sequence[StepMaps],
    words: Sequence[WordMap],
    max_time: float,
) -> List[Image.Image]:
    """One frame per step: every word's overlay, captioned with the noise remaining."""
    frames = []
    for s in steps:
        pct = noise_percent(s.timestep, max_time)
        head = f"noise {pct}%" if pct is not None else f"call {len(frames)}"
        tiles = [labelled(overlay(image, word_map(s.maps, w)), w.text) for w in words]
        frame = grid(tiles, columns=min(4, len(tiles)))
        out = Image.new("RGB", (frame.width, frame.height + 16), "white")
        out.paste(frame, (0, 16))
        ImageDraw.Draw(out).text((4, 2), head, fill="black")
        frames.append(with_bar(out))
    return frames


def bend_maps(
    records: Sequence[BendRecord], size: Tuple[int, int]
) -> Dict[str, Tuple[np.ndarray, np.ndarray, int]]:
    """Per bend label: (original, bent) maps averaged over its steps and sites at size, and the count."""
    sums: Dict[str, List] = {}
    for r in records:
        orig = T.resize_bilinear(np.asarray(r.original, np.float32), size)
        bent = T.resize_bilinear(np.asarray(r.bent, np.float32), size)
        acc = sums.setdefault(r.label, [0.0, 0.0, 0])
        acc[0], acc[1], acc[2] = acc[0] + orig, acc[1] + bent, acc[2] + 1
    return {k: (o / n, b / n, n) for k, (o, b, n) in sums.items()}


def bend_picture(
    image: np.ndarray, original: np.ndarray, bent: np.ndarray, label: str
) -> Image.Image:
    """The word's map before and after the bend on the image, side by side, one colour scale."""
    limits = (
        min(float(original.min()), float(bent.min())),
        max(float(original.max()), float(bent.max())),
    )
    tiles = [
        labelled(overlay(image, m, limits=limits), what)
        for m, what in ((original, "original"), (bent, "bent"))
    ]
    pair = grid(tiles, columns=2)
    out = Image.new("RGB", (pair.width, pair.height + 14), "white")
    out.paste(pair, (0, 14))
    ImageDraw.Draw(out).text((2, 1), label[:60], fill="black")
    return out


def write_bend_pictures(
    folder: Path,
    image: np.ndarray,
    records: Sequence[BendRecord],
    size: Tuple[int, int],
) -> List[str]:
    """One bend_NN_<label>.png per bend: its map before | after bending; the file names."""
    names = []
    for i, (label, (orig, bent, _)) in enumerate(bend_maps(records, size).items()):
        name = f"bend_{i:02d}_{slug(label, 30)}.png"
        bend_picture(image, orig, bent, label).save(folder / name)
        names.append(name)
    return names


def write_gallery(
    folder: Path,
    image: np.ndarray,
    recorder: Recorder,
    words: Sequence[WordMap],
    metadata: Dict,
    max_time: float,
    scale: int = 1,
    bend_records: Sequence[BendRecord] = (),
) -> List[str]:
    """Write image, overlays (image enlarged by scale), grid, evolution GIF, bend pictures
    and metadata into folder; the file names."""
    files = []
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)

    def save(img: Image.Image, name: str, **kw) -> None:
        img.save(folder / name, **kw)
        files.append(name)

    save(Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)), "image.png")
    mean = recorder.mean_maps()
    tiles = [labelled(Image.open(folder / "image.png"), "image")]
    for i, w in enumerate(words):
        o = overlay(image, word_map(mean, w))
        save(o, f"token_{i:02d}_{slug(w.text, 20)}.png")
        tiles.append(labelled(o, w.text))
    save(with_bar(grid(tiles)), "grid.png")
    frames = evolution_frames(image, recorder.steps, words, max_time)
    if frames:
        save(
            frames[0],
            "evolution.gif",
            save_all=True,
            append_images=frames[1:],
            duration=600,
            loop=0,
        )
    np.savez_compressed(
        folder / "maps.npz",
        maps=np.stack([s.maps for s in recorder.steps]),
        step_idx=np.array(
            [-1 if s.step_idx is None else s.step_idx for s in recorder.steps]
        ),
    )
    files.append("maps.npz")
    if bend_records:
        pictures = write_bend_pictures(folder, image, bend_records, recorder.size)
        files += pictures
        metadata["bending"]["pictures"] = pictures
    metadata = {**metadata, "files": files + ["metadata.json"]}
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    files.append("metadata.json")
    return files


def update_index(out_dir: Path, folder: Path, metadata: Dict) -> None:
    """Append the run to out_dir/index.json and rewrite out_dir/index.html."""
    index_path = out_dir / "index.json"
    runs = json.loads(index_path.read_text()) if index_path.exists() else []
    bending = metadata.get("bending") or {}
    runs.append(
        {
            "folder": folder.name,
            "prompt": metadata["prompt"],
            "seed": metadata["seed"],
            "bend_pictures": bending.get("pictures", []),
        }
    )
    index_path.write_text(json.dumps(runs, indent=2))
    (out_dir / "index.html").write_text(index_html(runs), encoding="utf-8")


def index_html(runs: Sequence[Dict]) -> str:
    """The gallery page: per run its grid, evolution GIF, bend pictures and metadata link."""
    rows = []
    for r in runs:
        f = html.escape(r["folder"])
        bends = "".join(
            f'<br><img src="{f}/{html.escape(n)}" alt="{html.escape(n)}">'
            for n in r.get("bend_pictures", [])
        )
        rows.append(
            f"<section><h2>{html.escape(r['prompt'])} (seed {r['seed']})</h2>"
            f'<p><a href="{f}/metadata.json">metadata</a> · '
            f'<a href="{f}/evolution.gif">evolution GIF</a> · '
            f'<a href="{f}/maps.npz">maps.npz</a></p>'
            f'<img src="{f}/grid.png" alt="per-token maps">'
            + (f"<p>bends, original | bent:</p>{bends}" if bends else "")
            + "</section>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>pulse capture</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "img{image-rendering:pixelated}</style>\n" + "\n".join(rows) + "\n"
    )


def capture_run(
    pipe,
    prompt: str,
    out_dir: Union[str, Path],
    num_steps: int = 4,
    cfg_weight: float = 7.5,
    latent_size: Optional[Tuple[int, int]] = None,
    seed: int = 0,
    negative_text: str = "",
    blocks=None,
    map_size: Optional[Tuple[int, int]] = None,
    bends: Optional[Union[BendingSettings, Sequence[BendConfig], Bender]] = None,
    scale: Optional[int] = None,
) -> CaptureResult:
    """Generate with attention capture (and optional bending) and write a gallery folder.

    The prompt may mark bendable words in parentheses; they are removed before
    tokenisation. ``blocks`` selects the sites averaged (all by default),
    ``map_size`` the common map size (the latent size by default). ``bends``
    may also be a Bender the caller has already attached to its Pulse; either
    way the bends go into the metadata and each bend's maps, before and after
    bending, into a picture. ``latent_size``
    None is the pipe's own default (upstream's 64x64, the toy's 8x8).
    """
    out_dir = Path(out_dir)
    latent_size = latent_size or default_latent_size(pipe)
    clean, _ = parse_prompt(prompt)
    attached = isinstance(bends, Bender)
    if attached:
        bender = bends
    else:
        bender = Bender(pipe, prompt, bends) if bends is not None else None
    recorder = Recorder(pipe, tuple(map_size or latent_size), blocks)
    mx.reset_peak_memory()
    t0 = time.perf_counter()

    def records():
        extra = bender.link.arrays() if bender is not None else []
        return [*recorder.arrays(), *extra]

    with recorder:
        if bender is not None and not attached:
            bender.__enter__()
        try:
            x = final_latents(
                pipe,
                clean,
                num_steps=num_steps,
                cfg_weight=cfg_weight,
                latent_size=latent_size,
                seed=seed,
                negative_text=negative_text,
                extra=records,
            )
        finally:
            if bender is not None:
                if attached:
                    bender.flush()
                else:
                    bender.__exit__(None, None, None)
    seconds = time.perf_counter() - t0
    peak = mx.get_peak_memory()
    image = decode(pipe, x)[0]
    worst = recorder.check_probabilities()
    words = word_maps(pipe, clean)
    tok = getattr(pipe, "tokenizer", None) or pipe.tokenizer_1
    max_time = float(pipe.sampler.max_time)
    metadata = {
        "prompt": prompt,
        "clean_prompt": clean,
        "negative_text": negative_text,
        "seed": seed,
        "tokens": tok.tokenize(clean),
        "words": [asdict(w) for w in words],
        "steps": [
            {
                "step_idx": s.step_idx,
                "timestep": s.timestep,
                "sigma": s.sigma,
                "noise_percent": noise_percent(s.timestep, max_time),
                "calls": s.calls,
            }
            for s in recorder.steps
        ],
        "blocks": recorder.block_ids,
        "settings": {
            "num_steps": num_steps,
            "cfg_weight": cfg_weight,
            "latent_size": list(latent_size),
            "map_size": list(recorder.size),
            "aggregation": "mean over heads and conditional rows, bilinear upsample, mean over blocks",
        },
        "bending": (
            None
            if bender is None
            else {
                "apply_to_output": bender.settings.apply_to_output,
                "phase": (
                    "apply" if bender.settings.apply_to_output else "visualise only"
                ),
                "bends": [asdict(rb.config) for rb in bender.bends],
                "records": len(bender.records),
            }
        ),
        "check": {"max_row_sum_error": worst},
        "memory": {"maps_bytes": recorder.nbytes, "peak_bytes": peak},
        "generation_seconds": seconds,
    }
    scale = scale or max(1, 128 // image.shape[1])  # overlays of at least 128 px
    folder = new_folder(out_dir, clean)
    files = write_gallery(
        folder,
        image,
        recorder,
        words,
        metadata,
        max_time,
        scale,
        bender.records if bender is not None else (),
    )
    update_index(out_dir, folder, metadata)
    return CaptureResult(folder, image, recorder, words, metadata, files)
