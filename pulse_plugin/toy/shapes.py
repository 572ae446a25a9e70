"""A synthetic captioned dataset of coloured shapes, generated with numpy.

Images are RGB float32 arrays in [0, 1] (H, W, 3) on a light grey background.
One or two objects (a circle, square or triangle in red, green, blue or
yellow) sit at named positions (left, right, top, bottom, centre), and the
caption says so, e.g. "a red circle on the left" or "a blue square on the left
and a yellow triangle on the right". Everything is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

SIZE = 32
SUPERSAMPLE = 4
BACKGROUND = (0.92, 0.92, 0.92)
COLOURS = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.12, 0.66, 0.16),
    "blue": (0.14, 0.24, 0.86),
    "yellow": (0.96, 0.80, 0.08),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "centre")
PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Object centres as fractions of the image size (x, y), y downwards.
CENTRES = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
PAIRS = (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))
WORDS = tuple(
    sorted(
        set(" ".join(PHRASES.values()).split())
        | set(COLOURS)
        | set(SHAPES)
        | {"a", "and", "center"}
    )
)
# (colour, shape, position) triples never drawn in training: the quality bar
# is measured on these captions, so it tests composition, not memory.
HELD_OUT: Tuple[Tuple[str, str, str], ...] = (
    ("red", "triangle", "right"),
    ("green", "circle", "top"),
    ("blue", "square", "left"),
    ("yellow", "triangle", "bottom"),
    ("red", "square", "centre"),
    ("green", "triangle", "left"),
    ("blue", "circle", "bottom"),
    ("yellow", "square", "top"),
)


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    position: str

    def phrase(self, colour: bool = True, position: bool = True) -> str:
        words = ["a", self.colour, self.shape] if colour else ["a", self.shape]
        return " ".join(words + ([PHRASES[self.position]] if position else []))

    def partial_phrases(self) -> List[str]:
        """The phrase without its colour, without its position, and without both."""
        return [
            self.phrase(colour=False),
            self.phrase(position=False),
            self.phrase(colour=False, position=False),
        ]


def caption(objects: Sequence[Obj]) -> str:
    return " and ".join(o.phrase() for o in objects)


def all_singles() -> List[Obj]:
    return [Obj(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]


def train_singles() -> List[Obj]:
    held = set(HELD_OUT)
    return [o for o in all_singles() if (o.colour, o.shape, o.position) not in held]


def held_out_singles() -> List[Obj]:
    return [Obj(*t) for t in HELD_OUT]


def _mask(shape: str, cx: float, cy: float, r: float, n: int) -> np.ndarray:
    """Coverage of one shape on an n x n grid of pixel centres (supersampled)."""
    k = n * SUPERSAMPLE
    coords = (np.arange(k, dtype=np.float32) + 0.5) / SUPERSAMPLE
    x = coords[None, :]
    y = coords[:, None]
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        h = r * 0.85
        inside = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    elif shape == "triangle":
        # Upward triangle with apex at the top, base at the bottom.
        top, bottom = cy - r, cy + r * 0.8
        t = np.clip((y - top) / (bottom - top), 0.0, 1.0)
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= t * r * 1.05)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cover = inside.astype(np.float32).reshape(n, SUPERSAMPLE, n, SUPERSAMPLE)
    return cover.mean(axis=(1, 3))


def render(
    objects: Sequence[Obj], rng: np.random.Generator, size: int = SIZE
) -> np.ndarray:
    """An (size, size, 3) float32 image of the objects, jittered by ``rng``."""
    image = np.empty((size, size, 3), np.float32)
    image[:] = BACKGROUND
    two = len(objects) > 1
    for obj in objects:
        fx, fy = CENTRES[obj.position]
        r = size * (rng.uniform(0.14, 0.19) if two else rng.uniform(0.17, 0.24))
        jitter = size * 0.06
        cx = fx * size + rng.uniform(-jitter, jitter)
        cy = fy * size + rng.uniform(-jitter, jitter)
        cover = _mask(obj.shape, cx, cy, r, size)[..., None]
        image = image * (1 - cover) + cover * np.asarray(
            COLOURS[obj.colour], np.float32
        )
    return image.astype(np.float32)


def sample_objects(
    rng: np.random.Generator, two_object_prob: float = 0.3, held_out: bool = False
) -> List[Obj]:
    """Objects for one training (or held-out) image."""
    pool = held_out_singles() if held_out else train_singles()
    first = pool[rng.integers(len(pool))]
    if rng.random() >= two_object_prob:
        return [first]
    pairs = [p for p in PAIRS if p[0] == first.position]
    if not pairs:  # a centred first object: move it to a random pair's first slot
        pair = PAIRS[rng.integers(len(PAIRS))]
        first = Obj(first.colour, first.shape, pair[0])
    else:
        pair = pairs[0]
    colours = [c for c in COLOURS if c != first.colour]
    second = Obj(
        colours[rng.integers(len(colours))],
        SHAPES[rng.integers(len(SHAPES))],
        pair[1],
    )
    return [first, second]


def make_dataset(
    n: int, seed: int = 0, two_object_prob: float = 0.3, size: int = SIZE
) -> Tuple[np.ndarray, List[str], List[List[Obj]]]:
    """``n`` images (n, size, size, 3), their captions and their objects."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.float32)
    captions: List[str] = []
    scenes: List[List[Obj]] = []
    for i in range(n):
        objects = sample_objects(rng, two_object_prob)
        images[i] = render(objects, rng, size)
        captions.append(caption(objects))
        scenes.append(objects)
    return images, captions, scenes


def iter_held_out(repeats: int = 1) -> Iterator[Obj]:
    """The held-out single-object scenes, each ``repeats`` times."""
    for obj in held_out_singles():
        for _ in range(repeats):
            yield obj


def to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))


def grid(images: np.ndarray, cols: Optional[int] = None) -> np.ndarray:
    """Tile (n, H, W, 3) images into one array."""
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.ones((rows * h, cols * w, c), images.dtype)
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
    return out
