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


def _stored(path, header_len_delta: int = 0, extra: bytes = b"") -> None:
    """Two float32 tensors as safetensors writes them (header padded with spaces to 8
    bytes), with the header length off by ``header_len_delta`` and ``extra`` appended."""
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8 or 8)  # at least a few padding bytes
    data = struct.pack("<5f", 1, 2, 3, 4, 5)
    path.write_bytes(struct.pack("<Q", len(raw) + header_len_delta) + raw + data + extra)


@pytest.mark.parametrize(("delta", "extra"), [(-4, b""), (-1, b""), (0, b"\0" * 4)])
def test_header_and_offsets_must_cover_the_file_exactly(tmp_path, delta, extra):
    """A header length a few bytes short still parses (the padding is JSON whitespace) but
    shifts every tensor; trailing bytes are data no tensor owns. safetensors refuses both."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    good = tmp_path / "good.safetensors"
    _stored(good)
    assert read_header(good)["b"].start == good.stat().st_size - 12
    bad = tmp_path / "bad.safetensors"
    _stored(bad, delta, extra)
    with pytest.raises(SafetensorError):
        load_file(bad)
    with pytest.raises(InputError, match="do not cover the file exactly") as exc:
        read_header(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_a_gap_between_tensors_is_refused(tmp_path):
    path = tmp_path / "gap.safetensors"
    _write(path, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12)
    with pytest.raises(InputError, match="do not cover the file exactly"):
        read_header(path)
