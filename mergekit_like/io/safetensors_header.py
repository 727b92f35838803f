"""Reading and checking safetensors headers, without reading any tensor data.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to ``{dtype, shape, data_offsets}``, then the data. This module parses and
validates that header so the planner knows every tensor before a byte of data is read.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mergekit_like.errors import InputError

#: bytes per element of each safetensors dtype
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
#: recipe dtype name -> safetensors dtype
RECIPE_DTYPES: dict[str, str] = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
}
MAX_HEADER = 100_000_000


def promote_dtypes(dtypes: Iterable[str]) -> str:
    """The float safetensors dtype that holds every one of ``dtypes`` (torch's promotion).

    mergekit computes a tensor in this dtype when the recipe gives no ``dtype``:
    ``promote_dtypes(["BF16", "BF16"]) == "BF16"``, ``["BF16", "F32"] -> "F32"``, and
    ``["BF16", "F16"] -> "F32"`` (neither holds the other).
    """
    kinds = set(dtypes)
    for wide in ("F64", "F32"):
        if wide in kinds:
            return wide
    if len(kinds) > 1:
        return "F32"
    return kinds.pop() if kinds else "F32"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and the byte range of its data."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class NotRegularFileError(OSError):
    """A path that names a FIFO, device or socket where a file was expected."""


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; a FIFO or device is refused without blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(0, "not a regular file (a FIFO, device or folder)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _ints(value: object, count: int | None) -> tuple[int, ...] | None:
    """``value`` as a tuple of JSON integers (``count`` of them if given), else None."""
    if not isinstance(value, list) or (count is not None and len(value) != count):
        return None
    if not all(type(v) is int for v in value):  # not bool, not 2.0, not Infinity
        return None
    return tuple(value)


def _entry(path: Path, name: str, meta: object) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """The dtype, shape and data offsets of one header entry, each of the type it must be."""
    if not isinstance(meta, dict):
        raise InputError(f"{path}: corrupt safetensors header entry for {name!r} (not an "
                         "object)")
    dtype, shape, offsets = meta.get("dtype"), _ints(meta.get("shape"), None), \
        _ints(meta.get("data_offsets"), 2)
    for field, value in (("dtype", dtype if isinstance(dtype, str) else None),
                         ("shape", shape), ("data_offsets", offsets)):
        if value is None:
            want = "a dtype name" if field == "dtype" else "a list of integers"
            raise InputError(f"{path}: corrupt safetensors header entry for {name!r}: "
                             f"{field}: expected {want}, got {meta.get(field)!r:.60}")
    return dtype, shape, offsets  # type: ignore[return-value]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header; return each tensor's :class:`TensorInfo`.

    >>> read_header(Path("model.safetensors"))  # doctest: +SKIP
    {'lm_head.weight': TensorInfo(file=..., dtype='F32', shape=(64, 32), ...), ...}
    """
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise InputError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (hlen,) = struct.unpack("<Q", raw_len)
            if hlen > MAX_HEADER or 8 + hlen > size:
                raise InputError(f"{path}: corrupt safetensors header (length {hlen} "
                                 f"does not fit the {size}-byte file)")
            raw = f.read(hlen)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_header(raw, size, path)


def parse_header(raw: bytes, size: int, path: Path) -> dict[str, TensorInfo]:
    """Check the JSON header ``raw`` of a ``size``-byte safetensors file at ``path`` (which
    need not exist yet: a hub file read by range requests) and return its tensors."""
    hlen = len(raw)
    try:
        header = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, NaN, digits
        raise InputError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    base = 8 + hlen
    out: dict[str, TensorInfo] = {}
    spans = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = _entry(path, name, meta)
        if dtype not in DTYPE_SIZES:
            raise InputError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise InputError(f"{path}: tensor {name!r} has a bad shape or offsets")
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise InputError(f"{path}: tensor {name!r}: offsets [{begin}, {end}) do not match "
                             f"shape {list(shape)} of {dtype}")
        if base + end > size:
            raise InputError(f"{path}: tensor {name!r} runs past the end of the file "
                             "(truncated download?)")
        spans.append((begin, end, name))
        out[name] = TensorInfo(path, dtype, shape, base + begin, base + end)
    spans.sort()
    for (_, e1, n1), (b2, _, n2) in zip(spans, spans[1:], strict=False):
        if b2 < e1:
            raise InputError(f"{path}: tensors {n1!r} and {n2!r} overlap in the file")
    check_coverage(path, hlen, [(b, e) for b, e, _ in spans], size)
    return out


def check_coverage(path: Path, hlen: int, spans: list[tuple[int, int]], size: int) -> None:
    """Check that the header and the tensors' data offsets cover the file exactly, as the
    safetensors library does: sorted, the spans start at 0, each where the last ended, and
    the last ends at the end of the file. A header length a few bytes short still parses
    (its padding is JSON whitespace) but would shift every tensor: refused here.
    """
    at = 0
    for begin, end in sorted(spans):
        if begin != at:
            break
        at = end
    else:
        if 8 + hlen + at == size:
            return
    raise InputError(f"{path}: corrupt safetensors header: its length ({hlen}) and the "
                     f"tensors' data offsets do not cover the file exactly ({size} bytes)")
