"""Measure what a technique does to the toy model's images, as numbers.

The measures are pure functions on decoded images ``(H, W, 3)`` or batches
``(N, H, W, 3)`` in [0, 1] (and on attention maps ``(H, W)``); the runners
below them generate batches on a pipeline with a technique switched on, so
the tests (``tests/test_effects.py``) and ``tools/measure_effects.py`` share
one definition of each effect.

Colour is measured on the drawn (foreground) pixels, as a channel contrast:
``score(blue) = B - (R + G) / 2`` is 0.67 for the palette's blue and -0.37
for its red; position as the foreground's centroid in fractions of the image
(x right, y down).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import quality, shapes

# --------------------------------------------------------------- pure measures

_CONTRASTS = {
    "red": np.array([1.0, -0.5, -0.5], np.float32),
    "green": np.array([-0.5, 1.0, -0.5], np.float32),
    "blue": np.array([-0.5, -0.5, 1.0], np.float32),
    "yellow": np.array([0.5, 0.5, -1.0], np.float32),
}


def _batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    return images[None] if images.ndim == 3 else images


def half_mask(side: str, size: int) -> np.ndarray:
    """(size, size) boolean mask of the left/right/top/bottom half of the image."""
    return quality.half_region(side, size)


def colour_score(
    image: np.ndarray, colour: str, region: Optional[np.ndarray] = None
) -> float:
    """Mean channel contrast for colour over the drawn pixels (in region); NaN if none.

    The palette's own colour scores about +0.7, the others between -0.7 and 0.1;
    the background (grey) would score 0 but is excluded by the foreground mask.
    """
    image = np.asarray(image, np.float32)
    mask = quality.foreground(image)
    if region is not None:
        mask &= region
    if mask.sum() < quality.MIN_PIXELS:
        return float("nan")
    return float((image[mask] @ _CONTRASTS[colour]).mean())


def colour_scores(
    images: np.ndarray, colour: str, region: Optional[np.ndarray] = None
) -> np.ndarray:
    """colour_score of every image of a batch (N,)."""
    return np.array([colour_score(im, colour, region) for im in _batch(images)])


def centroid(image: np.ndarray) -> Tuple[float, float]:
    """(x, y) of the drawn pixels as fractions of the image size; NaN if none."""
    image = np.asarray(image, np.float32)
    mask = quality.foreground(image)
    if mask.sum() < quality.MIN_PIXELS:
        return float("nan"), float("nan")
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return float((xs.mean() + 0.5) / w), float((ys.mean() + 0.5) / h)


def centroids(images: np.ndarray) -> np.ndarray:
    """(N, 2) centroids (x, y) of a batch."""
    return np.array([centroid(im) for im in _batch(images)])


def foreground_fraction(
    images: np.ndarray, region: Optional[np.ndarray] = None
) -> np.ndarray:
    """(N,) fraction of each image's drawn pixels that lie inside region."""
    out = []
    for im in _batch(images):
        fg = quality.foreground(im)
        total = fg.sum()
        inside = (fg & region).sum() if region is not None else total
        out.append(inside / total if total else float("nan"))
    return np.array(out, np.float64)


def blobs(image: np.ndarray) -> List[np.ndarray]:
    """Masks of the separate drawn blobs (4-connected foreground of at least MIN_PIXELS)."""
    fg = quality.foreground(np.asarray(image, np.float32))
    seen = np.zeros_like(fg)
    found = []
    for start in zip(*np.nonzero(fg)):
        if seen[start]:
            continue
        blob = np.zeros_like(fg)
        seen[start], blob[start], stack = True, True, [start]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < fg.shape[0] and 0 <= nx < fg.shape[1]:
                    if fg[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = blob[ny, nx] = True
                        stack.append((ny, nx))
        if blob.sum() >= quality.MIN_PIXELS:
            found.append(blob)
    return found


def object_count(image: np.ndarray) -> int:
    """Separate drawn blobs (4-connected foreground of at least MIN_PIXELS pixels)."""
    return len(blobs(image))


def fill_ratio(image: np.ndarray, largest: bool = False) -> float:
    """Drawn pixels / their bounding box: about 0.79 for a disc, 1 for a square; NaN if none.

    ``largest``: of the largest blob only (stray specks ignored).
    """
    fg = quality.foreground(np.asarray(image, np.float32))
    if largest:
        found = blobs(image)
        fg = max(found, key=lambda b: b.sum()) if found else np.zeros_like(fg)
    if fg.sum() < quality.MIN_PIXELS:
        return float("nan")
    ys, xs = np.nonzero(fg)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return float(fg.sum() / box)


def summary(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, standard deviation) ignoring NaNs."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


# --------------------------------------------------------------- generation

STEPS = 12
CFG = 5.0


def model_path(path=None):
    """path, else $PULSE_TOY_MODEL, else the committed toy model's folder."""
    import os
    from pathlib import Path

    from . import default_model_path

    return Path(path or os.environ.get("PULSE_TOY_MODEL") or default_model_path())


def load_toy(path=None, sd_module=None):
    """The toy model (see model_path) in upstream's patched StableDiffusion."""
    from ..models import load_pipeline

    return load_pipeline(model_path(path), sd_module)


def generate(
    pipe,
    prompt: str,
    n: int,
    seed: int,
    steps: int = STEPS,
    cfg: float = CFG,
    setup: Optional[Callable] = None,
    on_step: Optional[Callable] = None,
) -> np.ndarray:
    """n images (n, H, W, 3) of prompt; setup(stack) enters techniques for this run.

    ``setup`` gets an ``ExitStack`` and enters whatever context managers the
    technique needs (a Pulse, a Bender, a Recorder); ``on_step()`` returns
    extra lazy arrays to evaluate with each step's latents.
    """
    from ..models import latent_size
    from ..sampling import decode, final_latents

    with ExitStack() as stack:
        if setup is not None:
            setup(stack)
        x = final_latents(
            pipe,
            prompt,
            n_images=n,
            num_steps=steps,
            cfg_weight=cfg,
            latent_size=latent_size(pipe, shapes.SIZE),
            seed=seed,
            extra=on_step,
        )
    return decode(pipe, x)


def with_pulse(pipe, prompt: str, configure: Callable) -> Callable:
    """A setup for generate(): a Pulse on prompt, configured by configure(pulse)."""
    from ..pulse import Pulse

    def setup(stack: ExitStack) -> None:
        pulse = Pulse(pipe, prompt=prompt)
        configure(pulse)
        stack.enter_context(pulse)

    return setup


def with_bends(pipe, prompt: str, bends: Sequence) -> Callable:
    """A setup for generate(): BendConfigs applied to the output (not recorded)."""
    from ..bending.config import BendingSettings
    from ..bending.processor import Bender

    def setup(stack: ExitStack) -> None:
        settings = BendingSettings(list(bends), apply_to_output=True, record=False)
        stack.enter_context(Bender(pipe, prompt, settings))

    return setup


def word_map(pipe, prompt: str, recorder, word: str) -> np.ndarray:
    """The recorder's step-averaged map of word (its tokens summed), (S, S)."""
    from ..tokens import find_phrase_pipeline

    mean = recorder.mean_maps()
    return mean[find_phrase_pipeline(pipe, prompt, word)].sum(0)


def captured(
    pipe, prompt: str, n: int, seed: int, steps: int = STEPS, cfg: float = CFG
):
    """(images, recorder): a plain run with capture recording every cross-attention site."""
    from ..capture.recorder import Recorder
    from ..models import latent_size

    recorder = Recorder(pipe, latent_size(pipe, shapes.SIZE))

    def setup(stack: ExitStack) -> None:
        stack.enter_context(recorder)

    images = generate(
        pipe, prompt, n, seed, steps, cfg, setup=setup, on_step=recorder.arrays
    )
    return images, recorder


# --------------------------------------------------------------- experiments
# Each experiment generates the baseline and the technique(s) with the same
# seed and returns per-image numbers: {name: (N,) array}. The tests assert on
# them; tools/measure_effects.py prints their means over several seeds.

RED_LEFT = "a red circle on the left"
BLUE_LEFT = "a blue circle on the left"
TWO = "a yellow circle on the left and a red square on the right"
TWO_NEW = "a blue circle on the left and a green square on the right"


def blueness(images: np.ndarray, region: Optional[np.ndarray] = None) -> np.ndarray:
    """(N,) blue-minus-red contrast of the drawn pixels: score(blue) - score(red)."""
    return colour_scores(images, "blue", region) - colour_scores(images, "red", region)


class Runs:
    """Generate-once cache of (prompt, technique name) -> images for one seed and size."""

    def __init__(self, pipe, n: int, seed: int, steps: int = STEPS, cfg: float = CFG):
        self.pipe, self.n, self.seed, self.steps, self.cfg = pipe, n, seed, steps, cfg
        self._done: Dict[Tuple[str, str], np.ndarray] = {}

    def get(self, prompt: str, name: str = "baseline", setup=None) -> np.ndarray:
        key = (prompt, name)
        if key not in self._done:
            self._done[key] = generate(
                self.pipe, prompt, self.n, self.seed, self.steps, self.cfg, setup
            )
        return self._done[key]

    def pulse(self, prompt: str, name: str, configure: Callable) -> np.ndarray:
        return self.get(prompt, name, with_pulse(self.pipe, prompt, configure))

    def bends(self, prompt: str, name: str, bends: Sequence) -> np.ndarray:
        return self.get(prompt, name, with_bends(self.pipe, prompt, bends))


# Technique settings the experiments use (shared by the tests and the tool).
PARTIAL_BLOCKS = "mid"  # injection into some blocks only
EMPTY_WINDOW = (1e-3, 0.0)  # below every sigma the sampler visits: never fires
OBJECT_WORDS = ("red", "circle", "left")  # the object's words in RED_LEFT
BEND_SHIFT = 0.5  # translate by half the image width
ANYWHERE = "a red circle"  # no position word: the object may land anywhere


def injection(runs: Runs) -> Dict[str, np.ndarray]:
    """Blueness of "a red circle on the left" with "a blue circle on the left" injected.

    Keys: baseline, all blocks, PARTIAL_BLOCKS (blueness per image) and
    ``empty window identical`` (one 0/1 value: bit-identical to the baseline).
    """
    import warnings

    base = runs.get(RED_LEFT)
    full = runs.pulse(RED_LEFT, "inject all", lambda p: p.inject("all", BLUE_LEFT))
    part = runs.pulse(
        RED_LEFT, "inject partial", lambda p: p.inject(PARTIAL_BLOCKS, BLUE_LEFT)
    )
    lo, hi = EMPTY_WINDOW[1], EMPTY_WINDOW[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the window is meant to match no step
        empty = runs.pulse(
            RED_LEFT,
            "inject empty window",
            lambda p: p.inject("all", BLUE_LEFT, sigma_start=hi, sigma_end=lo),
        )
    return {
        "baseline": blueness(base),
        "all blocks": blueness(full),
        PARTIAL_BLOCKS: blueness(part),
        "empty window identical": np.array([float(np.array_equal(empty, base))]),
    }


def regional(runs: Runs) -> Dict[str, np.ndarray]:
    """A two-object prompt with TWO_NEW injected everywhere vs in the left half only.

    Keys ``{baseline, everywhere, left half}: {left blue, right green}``: the
    blue score of the left half's drawn pixels (where TWO_NEW turns the yellow
    circle blue) and the green score of the right half's (where it turns the
    red square green).
    """
    size = runs.get(TWO).shape[1]
    left, right = half_mask("left", size), half_mask("right", size)
    out = {}
    for name, images in (
        ("baseline", runs.get(TWO)),
        (
            "everywhere",
            runs.pulse(TWO, "inject all", lambda p: p.inject("all", TWO_NEW)),
        ),
        (
            "left half",
            runs.pulse(TWO, "regional left", lambda p: p.regional(TWO_NEW, "left")),
        ),
    ):
        out[f"{name}: left blue"] = colour_scores(images, "blue", left)
        out[f"{name}: right green"] = colour_scores(images, "green", right)
    return out


def regional_single(runs: Runs) -> Dict[str, np.ndarray]:
    """One object: "a red circle on the left" with BLUE_LEFT injected into the left half.

    Outside its mask regional injection leaves the base prompt in force,
    colour word included; the toy model's colour word acts through the whole
    image, and the red still attended to in the right half can draw a second
    object there (run 6: share 0.02 -> 0.49; run 7: 0.01 -> 0.08). Taking
    "red" out of the right half's attention (``mask_tokens(..., mask="right")``)
    is the remedy measured here (docs/techniques.md, section 5). Keys
    ``{baseline, left half, left half + red masked right}: {left blueness,
    share in right half}`` (blueness of the left half's drawn pixels; share of
    all drawn pixels that lie in the right half).
    """
    size = runs.get(RED_LEFT).shape[1]
    left, right = half_mask("left", size), half_mask("right", size)

    def remedied(p):
        p.regional(BLUE_LEFT, "left")
        p.mask_tokens("red", mask="right")

    out = {}
    for name, images in (
        ("baseline", runs.get(RED_LEFT)),
        (
            "left half",
            runs.pulse(
                RED_LEFT, "regional left", lambda p: p.regional(BLUE_LEFT, "left")
            ),
        ),
        (
            "left half + red masked right",
            runs.pulse(RED_LEFT, "regional left, red masked right", remedied),
        ),
    ):
        out[f"{name}: left blueness"] = blueness(images, left)
        out[f"{name}: share in right half"] = foreground_fraction(images, right)
    return out


def token_weights(runs: Runs) -> Dict[str, np.ndarray]:
    """Blue score of "a blue circle on the left" with "blue" masked, weighted x0.3 and x3.

    The toy model draws red when a caption names no colour, so a masked
    colour word shows as the object turning red.
    """
    base = runs.get(BLUE_LEFT)
    masked = runs.pulse(BLUE_LEFT, "mask blue", lambda p: p.mask_tokens("blue"))
    down = runs.pulse(BLUE_LEFT, "reweight blue 0.3", lambda p: p.reweight("blue", 0.3))
    up = runs.pulse(BLUE_LEFT, "reweight blue 3", lambda p: p.reweight("blue", 3.0))
    return {
        "baseline": colour_scores(base, "blue"),
        "masked": colour_scores(masked, "blue"),
        "down-weighted x0.3": colour_scores(down, "blue"),
        "up-weighted x3": colour_scores(up, "blue"),
    }


def bending(runs: Runs) -> Dict[str, np.ndarray]:
    """Where the object goes when its words' maps are bent (applied, every site and step).

    On "a red circle on the left", the maps of OBJECT_WORDS (its colour, shape
    and position words) translated right by BEND_SHIFT and flipped left-right:
    the object's centroid x (fractions of the width) and the share of its
    drawn pixels in the right half. On "a red circle" (no position word: drawn
    left or right), the maps of "red" and "circle" kept in one half
    (regional_mask): the share of the drawn pixels in that half.
    """
    from ..bending.config import BendConfig

    def bends(mode, words=OBJECT_WORDS, **kw):
        return [BendConfig(t, mode, **kw) for t in words]

    size = runs.get(RED_LEFT).shape[1]
    right_half = half_mask("right", size)
    out = {}
    for name, b in (
        ("baseline", None),
        ("translate", bends("translate", dx=BEND_SHIFT)),
        ("flip", bends("flip", flip="horizontal")),
    ):
        images = runs.get(RED_LEFT) if b is None else runs.bends(RED_LEFT, name, b)
        out[f"{name}: object x"] = centroids(images)[:, 0]
        out[f"{name}: share in right half"] = foreground_fraction(images, right_half)
    for side, region in (("right", (0.5, 0, 1, 1)), ("left", (0, 0, 0.5, 1))):
        half = half_mask(side, size)
        masked = runs.bends(
            ANYWHERE,
            f"regional_mask {side}",
            bends("regional_mask", ("red", "circle"), region=region),
        )
        out[f"unbent: share in {side} half"] = foreground_fraction(
            runs.get(ANYWHERE), half
        )
        out[f"regional_mask {side}: share in {side} half"] = foreground_fraction(
            masked, half
        )
    return out


def capture(
    runs: Runs, words: Sequence[str] = ("circle", "red", "left")
) -> Dict[str, np.ndarray]:
    """How much more a word's recorded map weighs on the drawn object than off it.

    One image per run (the recorder averages the batch's rows), four runs with
    seeds ``1000 * seed + i``: for each word, mean map value on the image's drawn
    pixels / mean value elsewhere (map upsampled to the image, nearest). 1 means
    no relation; the drawn object's share of the image is reported too.
    """
    from . import quality

    out: Dict[str, list] = {f"{w}: on/off object": [] for w in words}
    out["object area"] = []
    for i in range(min(runs.n, 4)):
        images, rec = captured(
            runs.pipe, RED_LEFT, 1, 1000 * runs.seed + i, runs.steps, runs.cfg
        )
        fg = quality.foreground(images[0])
        out["object area"].append(fg.mean())
        for w in words:
            m = word_map(runs.pipe, RED_LEFT, rec, w)
            k = fg.shape[0] // m.shape[0]
            up = np.kron(m, np.ones((k, k)))
            ratio = (
                up[fg].mean() / up[~fg].mean() if fg.any() and (~fg).any() else np.nan
            )
            out[f"{w}: on/off object"].append(ratio)
    return {k: np.array(v, np.float64) for k, v in out.items()}


# --------------------------------------------------------------- LoRA

LORA_STEPS = 100
LORA_LR = 2e-3  # 3e-3 and above: the effect swings from seed to seed


def recolour_dataset(folder, n: int = 24, seed: int = 0):
    """n images of blue circles captioned "a red circle <position>" (png + txt files)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        position = shapes.POSITIONS[i % len(shapes.POSITIONS)]
        image = shapes.render([shapes.Obj("blue", "circle", position)], rng)
        shapes.to_pil(image).save(folder / f"{i:02d}.png")
        caption = shapes.caption([shapes.Obj("red", "circle", position)])
        (folder / f"{i:02d}.txt").write_text(caption + "\n")
    return folder


def train_recolour_lora(
    pipe, out, steps: int = LORA_STEPS, lr: float = LORA_LR, seed: int = 0
):
    """Train a rank-4 attention LoRA that draws "red circle" captions blue; its TrainResult."""
    import tempfile
    from pathlib import Path

    from ..lora import train

    with tempfile.TemporaryDirectory() as tmp:
        data = recolour_dataset(Path(tmp) / "data", seed=seed)
        config = train.TrainConfig(
            output=str(out),
            rank=4,
            learning_rate=lr,
            steps=steps,
            batch_size=8,
            resolution=shapes.SIZE,
            seed=seed,
            targets=("attn",),
            base_model="pulse_plugin toy model",
            progress=False,
        )
        return train.train(pipe, data, config)


def lora(runs: Runs, lora_file) -> Dict[str, np.ndarray]:
    """Blueness of "a red circle on the left" without, with (weight 1) and at 0.5 of the LoRA."""
    from ..lora import adapters, io

    base = runs.get(RED_LEFT)
    adapter = io.load_lora(lora_file)
    adapters.apply(runs.pipe, [adapter], [1.0])
    try:
        full = generate(runs.pipe, RED_LEFT, runs.n, runs.seed, runs.steps, runs.cfg)
        adapters.set_weights(runs.pipe, {adapter.name: 0.5})
        half = generate(runs.pipe, RED_LEFT, runs.n, runs.seed, runs.steps, runs.cfg)
    finally:
        adapters.remove(runs.pipe)
    return {
        "baseline": blueness(base),
        "weight 1": blueness(full),
        "weight 0.5": blueness(half),
    }


EXPERIMENTS = {
    "injection": injection,
    "regional": regional,
    "regional_single": regional_single,
    "tokens": token_weights,
    "bending": bending,
    "capture": capture,
}


# --------------------------------------------------------------- statistics
# What tests/test_effects.py asserts, one number per experiment output: the
# tests compare these with their thresholds, tools/measure_effects.py prints
# their spread over seeds and BLAS kernels.


def mean(values) -> float:
    """Mean ignoring NaNs."""
    return summary(values)[0]


def shift(out: Dict[str, np.ndarray], after: str, before: str = "baseline") -> float:
    """mean(after) - mean(before)."""
    return mean(out[after]) - mean(out[before])


def moved_share(
    out: Dict[str, np.ndarray], after: str, sign: float, before: str = "baseline"
) -> float:
    """Share of images whose value moved in sign's direction (image by image)."""
    return float((np.sign(sign) * (out[after] - out[before]) > 0).mean())


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _mask_share(side: str) -> Callable[[Dict[str, np.ndarray]], float]:
    return lambda r: mean(r[f"regional_mask {side}: share in {side} half"])


def _mask_gain(side: str) -> Callable[[Dict[str, np.ndarray]], float]:
    return lambda r: _mask_share(side)(r) - mean(r[f"unbent: share in {side} half"])


Statistic = Tuple[str, Callable[[Dict[str, np.ndarray]], float]]
STATISTICS: Dict[str, Statistic] = {
    "injection shift": ("injection", lambda r: shift(r, "all blocks")),
    "injection moved": ("injection", lambda r: moved_share(r, "all blocks", 1)),
    "injection blueness": ("injection", lambda r: mean(r["all blocks"])),
    "injection empty window identical": (
        "injection",
        lambda r: float(r["empty window identical"][0]),
    ),
    "injection mid / all": (
        "injection",
        lambda r: _ratio(shift(r, PARTIAL_BLOCKS), shift(r, "all blocks")),
    ),
    "regional left blue shift, everywhere": (
        "regional",
        lambda r: shift(r, "everywhere: left blue", "baseline: left blue"),
    ),
    "regional right green shift, everywhere": (
        "regional",
        lambda r: shift(r, "everywhere: right green", "baseline: right green"),
    ),
    "regional left / everywhere, left blue": (
        "regional",
        lambda r: _ratio(
            shift(r, "left half: left blue", "baseline: left blue"),
            shift(r, "everywhere: left blue", "baseline: left blue"),
        ),
    ),
    "regional left / everywhere, right green": (
        "regional",
        lambda r: _ratio(
            shift(r, "left half: right green", "baseline: right green"),
            shift(r, "everywhere: right green", "baseline: right green"),
        ),
    ),
    "single: left blueness shift": (
        "regional_single",
        lambda r: shift(r, "left half: left blueness", "baseline: left blueness"),
    ),
    "single: right share rise": (
        "regional_single",
        lambda r: shift(
            r, "left half: share in right half", "baseline: share in right half"
        ),
    ),
    "single, red masked right: left blueness shift": (
        "regional_single",
        lambda r: shift(
            r,
            "left half + red masked right: left blueness",
            "baseline: left blueness",
        ),
    ),
    "single, red masked right: right share change, abs": (
        "regional_single",
        lambda r: abs(
            shift(
                r,
                "left half + red masked right: share in right half",
                "baseline: share in right half",
            )
        ),
    ),
    "masked shift": ("tokens", lambda r: shift(r, "masked")),
    "masked moved": ("tokens", lambda r: moved_share(r, "masked", -1)),
    "x0.3 shift": ("tokens", lambda r: shift(r, "down-weighted x0.3")),
    "x0.3 moved": ("tokens", lambda r: moved_share(r, "down-weighted x0.3", -1)),
    "x3 shift": ("tokens", lambda r: shift(r, "up-weighted x3")),
    "x3 moved": ("tokens", lambda r: moved_share(r, "up-weighted x3", 1)),
    "translate x gain": (
        "bending",
        lambda r: shift(r, "translate: object x", "baseline: object x"),
    ),
    "translate share right": (
        "bending",
        lambda r: mean(r["translate: share in right half"]),
    ),
    "flip x gain": (
        "bending",
        lambda r: shift(r, "flip: object x", "baseline: object x"),
    ),
    "flip share right": ("bending", lambda r: mean(r["flip: share in right half"])),
}
STATISTICS.update(
    {
        f"regional_mask {side} {what}": ("bending", fn)
        for side in ("right", "left")
        for what, fn in (
            ("gain", _mask_gain(side)),
            ("share", _mask_share(side)),
        )
    }
)
STATISTICS.update(
    {
        "lora shift": ("lora", lambda r: shift(r, "weight 1")),
        "lora moved": ("lora", lambda r: moved_share(r, "weight 1", 1)),
        "lora blueness": ("lora", lambda r: mean(r["weight 1"])),
        "lora half-blend share": (
            "lora",
            lambda r: _ratio(shift(r, "weight 0.5"), shift(r, "weight 1")),
        ),
    }
)
STATISTICS["capture circle on/off"] = (
    "capture",
    lambda r: mean(r["circle: on/off object"]),
)


def statistic(name: str, out: Dict[str, np.ndarray]) -> float:
    """STATISTICS[name] of its experiment's output."""
    return STATISTICS[name][1](out)
