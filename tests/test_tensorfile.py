"""The strict .safetensors reader: duplicates, truncation, overlaps and bad headers refused."""

import json
import struct

import mlx.core as mx
import numpy as np
import pytest

from pulse_plugin.tensorfile import TensorFileError, load, read_header


def _write(path, header: str, data: bytes) -> None:
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _entry(dtype="F32", shape=(2,), start=0, end=8):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}


def test_reads_what_mlx_writes(tmp_path):
    path = tmp_path / "a.safetensors"
    a = mx.arange(6, dtype=mx.float32).reshape(2, 3)
    mx.save_safetensors(str(path), {"a": a, "b": mx.ones((4,), mx.float16)}, {"k": "v"})
    tensors, meta = load(path)
    assert np.array_equal(np.array(tensors["a"]), np.array(a))
    assert tensors["b"].dtype == mx.float16 and meta == {"k": "v"}
    entries, _ = read_header(path)
    assert sorted(e.name for e in entries) == ["a", "b"]


def test_duplicate_name_refused(tmp_path):
    path = tmp_path / "dup.safetensors"
    e1, e2 = json.dumps(_entry()), json.dumps(_entry(start=8, end=16))
    _write(path, '{"w": %s, "w": %s}' % (e1, e2), bytes(16))
    with pytest.raises(TensorFileError, match="names tensor 'w' twice"):
        load(path)


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"w": _entry(end=8)}, bytes(4), "truncated"),
        ({"w": _entry(end=6)}, bytes(8), "needs 8 bytes"),
        ({"w": _entry(), "v": _entry(start=4, end=12)}, bytes(12), "overlaps"),
        ({"w": _entry(dtype="Q9")}, bytes(8), "unknown dtype"),
        ({"w": {"dtype": "F32"}}, bytes(8), "needs dtype, shape"),
        ({"w": _entry(shape=(-2,))}, bytes(8), "malformed"),
        ({"__metadata__": {"a": 1}}, b"", "must map names to strings"),
    ],
)
def test_bad_headers_refused(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    _write(path, json.dumps(header), data)
    with pytest.raises(TensorFileError, match=message):
        load(path)


def test_not_safetensors(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(TensorFileError, match="too short"):
        load(short)
    pickle = tmp_path / "model.safetensors"
    pickle.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(TensorFileError, match="not a safetensors file"):
        load(pickle)
    garbage = tmp_path / "g.safetensors"
    _write(garbage, "{not json", b"")
    with pytest.raises(TensorFileError, match="not valid JSON"):
        load(garbage)
    with pytest.raises(TensorFileError, match="cannot be read"):
        load(tmp_path / "missing.safetensors")
