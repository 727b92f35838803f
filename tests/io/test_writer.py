"""Shard layout and streaming writes: files that safetensors itself reads back exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mergekit_like.io.writer import ShardWriter, layout_shards, parse_size


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("40kb") == 40_000
    assert parse_size("123") == 123
    for bad in ("", "GB", "-1GB", "5 parsecs"):
        with pytest.raises(ValueError, match="bad size"):
            parse_size(bad)


# mergekit's sizes (its parse_kmb): a bare K, M or B suffix counts thousands, millions and
# billions; we also take G (= B) and T, and keep the byte units (KB, GiB, ...).
MERGEKIT_SIZES = {
    "5B": 5_000_000_000, "5b": 5_000_000_000, "1G": 1_000_000_000, "500M": 500_000_000,
    "500m": 500_000_000, "100K": 100_000, "2k": 2_000, "1T": 10**12, "1000": 1000,
    "0.5B": 500_000_000, "5GB": 5_000_000_000, "2GiB": 2 * 2**30, "40kb": 40_000,
}


@pytest.mark.parametrize(("text", "expected"), MERGEKIT_SIZES.items())
def test_parse_size_reads_mergekit_suffixes(text, expected):
    assert parse_size(text) == expected


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "emb": torch.randn(7, 3, generator=g).to(torch.bfloat16),  # 42 bytes: odd alignment
        "w": torch.randn(5, 4, generator=g),
        "idx": torch.arange(3),
        "b": torch.randn(1, generator=g).to(torch.float16),
        "scalar": torch.tensor(2.5),
    }


def _write_all(folder, tensors, max_bytes, chunk_rows=None):
    layout = layout_shards([(n, {torch.float32: "F32", torch.bfloat16: "BF16",
                                 torch.float16: "F16", torch.int64: "I64"}[t.dtype],
                             tuple(t.shape)) for n, t in tensors.items()], max_bytes)
    writer = ShardWriter(folder, layout)
    for n, t in reversed(list(tensors.items())):  # any order works
        if chunk_rows and t.dim() > 0:
            row_bytes = t[0].numel() * t.element_size()
            for r in range(0, t.shape[0], chunk_rows):
                writer.write(n, t[r:r + chunk_rows], r * row_bytes)
        else:
            writer.write(n, t)
    writer.finish()
    return layout


def test_single_file_round_trip_and_alignment(tmp_path):
    tensors = _tensors()
    layout = _write_all(tmp_path, tensors, 10**9, chunk_rows=2)
    assert layout.files == ("model.safetensors",)
    loaded = load_file(tmp_path / "model.safetensors")
    assert set(loaded) == set(tensors)
    for n, t in tensors.items():
        assert torch.equal(loaded[n], t), n
    for n, t in tensors.items():
        assert layout.slots[n].start % t.element_size() == 0, n
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_sharded_round_trip_with_index(tmp_path):
    tensors = _tensors()
    layout = _write_all(tmp_path, tensors, 64)
    n = len(layout.files)
    assert n > 1 and layout.files[0] == f"model-00001-of-{n:05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in tensors.values())
    for n, t in tensors.items():
        with safe_open(tmp_path / index["weight_map"][n], "pt") as f:
            assert torch.equal(f.get_tensor(n), t)


def test_unfinished_tensor_is_an_error(tmp_path):
    layout = layout_shards([("a", "F32", (4,)), ("b", "F32", (2,))], 10**9)
    writer = ShardWriter(tmp_path, layout)
    writer.write("a", torch.zeros(4))
    with pytest.raises(RuntimeError, match="not fully written"):
        writer.finish()
    writer.close()
    with pytest.raises(ValueError, match="past the end"):
        w2 = ShardWriter(tmp_path, layout)
        try:
            w2.write("b", torch.zeros(3))
        finally:
            w2.close()


def test_word_sum_of_pieces_in_any_order_is_the_sum_of_the_whole():
    """The journal's checksum: little-endian 64-bit words summed mod 2**64, written out."""
    import random

    from mergekit_like.io.writer import word_sum

    rng = random.Random(0)
    data = bytes(rng.randrange(256) for _ in range(1003))
    padded = data + bytes(-len(data) % 8)
    want = sum(int.from_bytes(padded[i:i + 8], "little") for i in range(0, len(padded), 8))
    assert word_sum(data) == want % 2**64
    cuts = sorted(rng.sample(range(1, len(data)), 9))
    pieces = [(a, data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    rng.shuffle(pieces)
    assert sum(word_sum(p, at) for at, p in pieces) % 2**64 == word_sum(data)
    lost = data[:500] + bytes(8) + data[508:]  # a few bytes that never reached the disk
    assert word_sum(lost) != word_sum(data)
