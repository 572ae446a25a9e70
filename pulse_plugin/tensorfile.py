"""Read ``.safetensors`` files strictly: the header is checked before any tensor is read.

``mx.load`` accepts headers that name a tensor twice (the last one wins), data ranges
that overlap or run past the end of the file, and truncated files in some cases. Every
reader of model and LoRA files goes through :func:`load`, which refuses all of these
with an error naming the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import mlx.core as mx

PathLike = Union[str, Path]

# Bytes per element of each safetensors dtype.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
MAX_HEADER = 100 * 1024 * 1024


class TensorFileError(ValueError):
    """A ``.safetensors`` file that cannot be read as it claims to be."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    start: int
    end: int


def _no_duplicates(path: Path):
    def hook(pairs: List[Tuple[str, object]]) -> Dict[str, object]:
        seen: Dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise TensorFileError(
                    f"{path}: the header names tensor {key!r} twice "
                    "(refused: which copy is meant is ambiguous)"
                )
            seen[key] = value
        return seen

    return hook


def _naturals(xs: object) -> bool:
    return isinstance(xs, list) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs
    )


def _entry(path: Path, name: str, info: object) -> TensorEntry:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(
        info
    ):
        raise TensorFileError(
            f"{path}: header entry {name!r} needs dtype, shape and data_offsets"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise TensorFileError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not _naturals(shape) or not _naturals(offsets) or len(offsets) != 2:
        raise TensorFileError(f"{path}: tensor {name!r} has a malformed shape/offsets")
    start, end = offsets
    if end - start != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise TensorFileError(
            f"{path}: tensor {name!r} ({dtype} {tuple(shape)}) needs "
            f"{math.prod(shape) * DTYPE_SIZES[dtype]} bytes, its offsets give {end - start}"
        )
    return TensorEntry(name, dtype, tuple(shape), start, end)


def read_header(path: PathLike) -> Tuple[List[TensorEntry], Dict[str, str]]:
    """The tensor entries (in file order) and the string metadata, all checked."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TensorFileError(f"{path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise TensorFileError(
                    f"{path}: not a safetensors file (header length {n} for a "
                    f"{size}-byte file; truncated or another format)"
                )
            raw = f.read(n)
    except OSError as exc:
        raise TensorFileError(
            f"{path}: cannot be read ({exc.strerror or exc})"
        ) from exc
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFileError(f"{path}: the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise TensorFileError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise TensorFileError(f"{path}: __metadata__ must map names to strings")
    entries = sorted(
        (_entry(path, name, info) for name, info in header.items()),
        key=lambda e: (e.start, e.end),
    )
    data = size - 8 - n
    position = 0
    for e in entries:
        if e.start < position:
            raise TensorFileError(f"{path}: tensor {e.name!r} overlaps another one")
        position = e.end
    if position > data:
        raise TensorFileError(
            f"{path}: truncated: its tensors need {position} bytes of data, "
            f"the file holds {data}"
        )
    return entries, metadata


def load(path: PathLike) -> Tuple[Dict[str, mx.array], Dict[str, str]]:
    """Every tensor and the metadata of a checked ``.safetensors`` file."""
    path = Path(path)
    entries, _ = read_header(path)
    try:
        tensors, metadata = mx.load(
            str(path), format="safetensors", return_metadata=True
        )
    except Exception as exc:  # MLX raises bare RuntimeError/ValueError
        raise TensorFileError(
            f"{path}: not a readable safetensors file ({exc})"
        ) from exc
    if set(tensors) != {e.name for e in entries}:
        raise TensorFileError(f"{path}: MLX read other tensors than the header lists")
    return tensors, metadata
