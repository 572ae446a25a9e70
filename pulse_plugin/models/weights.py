"""Reading weight files (single or sharded) and setting every parameter of a model from them.

All reads go through :mod:`pulse_plugin.tensorfile`. A model is loaded only when
every one of its parameters is set from the files with the right shape and no
tensor of the files is left over; otherwise the error names what is missing,
unexpected or misshaped, and the model is not touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from .. import tensorfile
from .config import ModelError, ModelNotFoundError, read_json

Mapper = Callable[[str, mx.array], List[Tuple[str, mx.array]]]
SHOWN = 8  # how many names an error lists


def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def weight_files(part: Path, stem: str) -> Tuple[List[Path], Optional[Path]]:
    """(files, index json or None) of a part: ``stem.safetensors``, or the shards an index names.

    As diffusers does, an index json is preferred when both are present; a folder
    with only the fp16 variant (``stem.fp16.safetensors``) is read from that.
    """
    for index, single in _candidates(part, stem):
        if index.is_file():
            return _shards(index), index
        if single.is_file():
            return [single], None
    index, single = _candidates(part, stem)[0]
    raise ModelNotFoundError(
        f"{part}: no weights (expected {single.name} or {index.name})"
    )


def _candidates(part: Path, stem: str) -> List[Tuple[Path, Path]]:
    """(index json, single file) names: the plain ones, then the fp16 variant's."""
    return [
        (part / f"{stem}.safetensors.index.json", part / f"{stem}.safetensors"),
        (
            part / f"{stem}.safetensors.index.fp16.json",
            part / f"{stem}.fp16.safetensors",
        ),
    ]


def _shards(index: Path) -> List[Path]:
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index}: field 'weight_map' must map tensor names to files")
    shards = []
    for name in dict.fromkeys(weight_map.values()):
        if not isinstance(name, str) or Path(name).name != name:
            raise ModelError(
                f"{index}: weight_map names shard {name!r}, not a file name"
            )
        if not (index.parent / name).is_file():
            raise ModelNotFoundError(
                f"{index}: shard {name} is missing from {index.parent}"
            )
        shards.append(index.parent / name)
    return shards


def read_shards(
    files: Sequence[Path], index: Optional[Path] = None
) -> Dict[str, mx.array]:
    """Every tensor of the files; a name in two files, or not where the index says, is refused."""
    tensors: Dict[str, mx.array] = {}
    where: Dict[str, Path] = {}
    for path in files:
        part, _ = tensorfile.load(path)
        for name, value in part.items():
            if name in tensors:
                raise ModelError(f"{path}: tensor {name!r} is also in {where[name]}")
            tensors[name], where[name] = value, path
    if index is not None:
        weight_map = read_json(index)["weight_map"]
        wrong = [n for n, f in weight_map.items() if where.get(n, Path()).name != f]
        if wrong:
            raise ModelError(
                f"{index}: tensors not in the shard the index names: {_names(wrong)}"
            )
        extra = set(tensors) - set(weight_map)
        if extra:
            raise ModelError(
                f"{index}: shards hold tensors the index does not list: {_names(extra)}"
            )
    return tensors


def read_part(part: Path, stem: str) -> Tuple[Dict[str, mx.array], str]:
    """A part folder's tensors and the file to name in errors (the index, if sharded)."""
    files, index = weight_files(part, stem)
    return read_shards(files, index), str(index or files[0])


def load_into(
    model,
    mapper: Mapper,
    tensors: Dict[str, mx.array],
    source: str,
    float16: bool = False,
) -> None:
    """Set every parameter of ``model`` from ``tensors`` through upstream's ``mapper``.

    Refused (model untouched): a parameter no tensor sets, a tensor that sets no
    parameter, a shape that differs, a name two tensors map to, a non-float tensor.
    """
    dtype = mx.float16 if float16 else mx.float32
    wanted = {k: v.shape for k, v in tree_flatten(model.parameters())}
    mapped: Dict[str, mx.array] = {}
    origin: Dict[str, str] = {}
    unexpected, misshaped = [], []
    for key, value in tensors.items():
        if not mx.issubdtype(value.dtype, mx.floating):
            raise ModelError(
                f"{source}: tensor {key!r} has dtype {value.dtype}, expected floats"
            )
        for name, array in mapper(key, value.astype(dtype)):
            if name in mapped:
                raise ModelError(
                    f"{source}: tensors {origin[name]!r} and {key!r} both set {name!r}"
                )
            if name not in wanted:
                unexpected.append(key)
                continue
            if tuple(array.shape) != tuple(wanted[name]):
                misshaped.append(
                    f"{key} {tuple(value.shape)} (needs {tuple(wanted[name])})"
                )
                continue
            mapped[name], origin[name] = array, key
    problems = []
    if unexpected:
        problems.append(
            f"tensors that are no parameter of the model: {_names(unexpected)}"
        )
    if misshaped:
        problems.append(f"tensors of the wrong shape: {_names(misshaped)}")
    unset = set(wanted) - set(mapped)
    if unset:
        problems.append(f"parameters no tensor sets (upstream names): {_names(unset)}")
    if problems:
        raise ModelError(f"{source}: does not fully load: " + "; ".join(problems))
    model.update(tree_unflatten(list(mapped.items())))
