"""Header parsing: good files round-trip; every kind of corruption is a one-line InputError."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from mergekit_like.errors import InputError
from mergekit_like.io.safetensors_header import read_header


def _write(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_reads_shapes_dtypes_and_offsets(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.bfloat16)}
    save_file(tensors, path)
    info = read_header(path)
    assert info["a"].shape == (3, 4) and info["a"].dtype == "F32" and info["a"].nbytes == 48
    assert info["b"].dtype == "BF16" and info["b"].numel == 5
    raw = path.read_bytes()
    assert raw[info["b"].start:info["b"].end] == tensors["b"].view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize(("header", "data", "message"), [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "runs past the end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, "do not match"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unsupported dtype"),
    ({"a": {"shape": [2]}}, b"", "corrupt safetensors header entry"),
    ([1, 2], b"", "not a JSON object"),
])
def test_corrupt_headers(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    _write(path, header, data)
    with pytest.raises(InputError, match=message) as exc:
        read_header(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_and_garbage_files(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\1\2")
    with pytest.raises(InputError, match="shorter than 8 bytes"):
        read_header(short)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(InputError, match="does not fit"):
        read_header(huge)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
    with pytest.raises(InputError, match="not valid JSON"):
        read_header(junk)
