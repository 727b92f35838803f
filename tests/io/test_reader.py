"""The tensor reader: row ranges and raw bytes through pread."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mergekit_like.errors import InputError
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.safetensors_header import read_header


@pytest.fixture
def stored(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "m": torch.randn(37, 5, generator=g).to(torch.bfloat16),
        "v": torch.randn(11, generator=g).to(torch.float16),
        "s": torch.tensor(2.5, dtype=torch.float32),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, path)
    return path, tensors


@pytest.mark.parametrize("rows", [None, (0, 37), (3, 9), (36, 37), (5, 5)])
def test_read_bytes_are_the_stored_bytes_of_the_rows(stored, rows):
    path, tensors = stored
    info = read_header(path)["m"]
    with TensorReader() as reader:
        got = reader.read_bytes(info, rows)
    r0, r1 = rows or (0, 37)
    want = tensors["m"][r0:r1].contiguous().view(torch.uint8).reshape(-1)
    assert got.dtype == torch.uint8 and torch.equal(got, want)


def test_read_bytes_of_vectors_and_scalars_and_read_agree(stored):
    path, tensors = stored
    header = read_header(path)
    with TensorReader() as reader:
        for name in ("v", "s"):
            raw = reader.read_bytes(header[name])
            assert torch.equal(raw.view(tensors[name].dtype).reshape(tensors[name].shape),
                               tensors[name])
            assert torch.equal(reader.read(header[name], name), tensors[name])
        assert torch.equal(reader.read(header["m"], "m", rows=(3, 9), dtype="float32"),
                           tensors["m"][3:9].float())


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_a_file_truncated_under_the_reader_is_one_line_naming_it(stored, dtype):
    """A memory map would die of SIGBUS here; pread sees a short read."""
    path, tensors = stored
    info = read_header(path)["m"]
    with TensorReader() as reader:
        assert torch.equal(reader.read(info, "m", rows=(0, 2)), tensors["m"][:2])
        with open(path, "r+b") as f:
            f.truncate(info.start + 10)
        for read in (lambda: reader.read_bytes(info),
                     lambda: reader.read(info, "m", rows=(1, 30), dtype=dtype)):
            with pytest.raises(InputError, match="changed while being read") as exc:
                read()
            assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)
