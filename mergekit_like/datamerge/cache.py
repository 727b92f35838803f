"""The statistics cache: Fisher diagonals and Gram matrices, computed once per (model files,
data, settings) and kept as safetensors files in the user cache.

The folder is ``$MERGEKIT_LIKE_CACHE/stats`` (else ``$XDG_CACHE_HOME/mergekit_like/stats``,
else ``~/.cache/mergekit_like/stats``), as the native kernels' cache. A file is written to a
unique temporary name in that folder, flushed, then renamed over its final name
(``os.replace`` is atomic), so an interruption or two concurrent runs never leave a torn file:
a reader sees either no file or a whole one. A file that does not read back (cut by a full
disk, edited) counts as a miss and is recomputed.

Example::

    cache = StatsCache.user(enabled=True)
    key = stats_key("fisher", model_hash(folder), data_hash(inputs, labels), {"n": 64})
    stats = cache.load(key) or cache.store(key, compute())
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.native.build import cache_dir

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1  # bump when the statistics' definition changes
_HASHED_SUFFIXES = (".safetensors", ".json", ".bin")


def model_hash(folder: Path) -> str:
    """sha256 over a model folder's weight and config files (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.suffix in _HASHED_SUFFIXES and p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def data_hash(inputs: Mapping[str, torch.Tensor], labels: torch.Tensor | None) -> str:
    """sha256 over the examples the statistics are computed on (names, shapes, bytes)."""
    digest = hashlib.sha256()
    items = sorted(inputs.items()) + ([("__labels__", labels)] if labels is not None else [])
    for name, tensor in items:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(-1).numpy().tobytes())
    return digest.hexdigest()


def stats_key(kind: str, model: str, data: str, settings: Mapping[str, Any]) -> str:
    """The cache key of one model's statistics: a hash of everything that decides them."""
    text = json.dumps(
        {
            "v": FORMAT_VERSION,
            "kind": kind,
            "model": model,
            "data": data,
            "settings": dict(settings),
        },
        sort_keys=True,
    )
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


class StatsCache:
    """Statistics files by key: in ``folder`` (the user cache, or a run's staging folder
    when caching is off)."""

    def __init__(self, folder: Path, persistent: bool) -> None:
        self.folder = folder
        self.persistent = persistent

    @classmethod
    def user(cls, enabled: bool, staging: Path) -> StatsCache:
        """The user cache when ``enabled``, else a throw-away folder inside ``staging``."""
        if enabled:
            return cls(cache_dir() / "stats", True)
        return cls(staging / ".datamerge-stats", False)

    def discard(self) -> None:
        """Delete a throw-away folder (caching off); the user cache is kept."""
        if not self.persistent and self.folder.exists():
            import shutil

            shutil.rmtree(self.folder)

    def path(self, key: str) -> Path:
        """The file of ``key`` (present or not)."""
        return self.folder / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        """Whether a whole, readable file is stored under ``key``."""
        path = self.path(key)
        if not (self.persistent and path.is_file()):
            return False
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception:  # noqa: BLE001 - any unreadable file is a miss, recomputed
            return False
        return True

    def store(self, key: str, tensors: dict[str, torch.Tensor], consume: bool = False) -> Path:
        """Write ``tensors`` under ``key`` atomically (temporary file, fsync, rename), one
        tensor at a time after a header laid out from their shapes; ``consume``: each entry
        is taken out of ``tensors`` once written, so its memory can go at once."""
        return self._atomic(key, lambda fd: _write_stats(fd, tensors, consume))

    def store_parts(
        self,
        key: str,
        shapes: Mapping[str, Sequence[int]],
        parts: Iterable[dict[str, torch.Tensor]],
    ) -> Path:
        """As :meth:`store`, for tensors that come in parts (each dict taken over and
        emptied as written): every name is one of ``shapes``, with that shape; the header
        goes in last, into room reserved for all of ``shapes``."""
        return self._atomic(key, lambda fd: _write_parts(fd, shapes, parts))

    def _atomic(self, key: str, write: Any) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.folder)
        try:
            write(fd)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, self.path(key))
        finally:
            if fd >= 0:
                os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)


def _write_stats(fd: int, tensors: dict[str, torch.Tensor], consume: bool) -> None:
    """A safetensors file of float32 ``tensors`` into ``fd``: the header (from names and
    shapes), then each tensor's bytes written straight at its offset."""
    entries, offset = {}, 0
    names = sorted(tensors)
    for name in names:
        shape = list(tensors[name].shape)
        size = 4 * math.prod(shape)
        entries[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header = _header(entries, 0)
    os.write(fd, header)
    for name in names:
        t = tensors.pop(name) if consume else tensors[name]
        _pwrite_tensor(fd, t, len(header) + entries[name]["data_offsets"][0])
        del t


def _write_parts(
    fd: int, shapes: Mapping[str, Sequence[int]], parts: Iterable[dict[str, torch.Tensor]]
) -> None:
    """A safetensors file of the float32 tensors of ``parts`` into ``fd``, each written as it
    comes after room for a header naming all of ``shapes``; the header of those written
    goes in last (padded with spaces to that room: numbers no longer than the bound's)."""
    total = sum(4 * math.prod(s) for s in shapes.values())
    bound = {
        n: {"dtype": "F32", "shape": list(s), "data_offsets": [total, total]}
        for n, s in shapes.items()
    }
    room = len(_header(bound, 0))
    entries: dict[str, Any] = {}
    offset = 0
    for part in parts:
        for name in sorted(part):
            t = part.pop(name)
            if name in entries or list(t.shape) != list(shapes.get(name, [-1])):
                raise ValueError(f"statistic {name}: not one of the shapes laid out")
            size = 4 * t.numel()
            entries[name] = {
                "dtype": "F32",
                "shape": list(t.shape),
                "data_offsets": [offset, offset + size],
            }
            _pwrite_tensor(fd, t, room + offset)
            offset += size
            del t
    header = _header(entries, room)
    done = 0
    while done < len(header):
        done += os.pwrite(fd, header[done:], done)


def _header(entries: Mapping[str, Any], room: int) -> bytes:
    """The 8-byte length and JSON header of ``entries``, padded with spaces to a multiple
    of 8 bytes in all, or to ``room`` bytes in all when given."""
    text = json.dumps(entries, separators=(",", ":")).encode()
    pad = room - 8 - len(text) if room else -(len(text) + 8) % 8
    assert pad >= 0, "the header outgrew its room"
    text += b" " * pad
    return len(text).to_bytes(8, "little") + text


def _pwrite_tensor(fd: int, t: torch.Tensor, at: int) -> None:
    """Write ``t``'s bytes as float32 at offset ``at`` of ``fd``."""
    import torch

    data = t.detach().to("cpu", torch.float32).contiguous().reshape(-1).view(torch.uint8)
    view = memoryview(data.numpy())
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], at + done)


class StatsFile:
    """One statistics file, read tensor by tensor with plain reads (no memory map, so a
    tensor read leaves no file pages mapped into the process: memory stays one tensor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._entries: dict[str, dict[str, Any]] = header

    def keys(self) -> set[str]:
        """The names of the tensors held."""
        return set(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``name`` (float32, as stored); rows [r0, r1) of it when ``rows`` given."""
        import torch

        entry = self._entries[name]
        if entry["dtype"] != "F32":
            raise ValueError(f"{self.path}: {name} is {entry['dtype']}, expected F32")
        start, end = entry["data_offsets"]
        shape = list(entry["shape"])
        if rows is not None and shape:
            row_bytes = 4 * math.prod(shape[1:])
            start, end = start + rows[0] * row_bytes, start + rows[1] * row_bytes
            shape[0] = rows[1] - rows[0]
        buf = bytearray(end - start)
        with self.path.open("rb") as f:
            f.seek(self._base + start)
            f.readinto(buf)
        return torch.frombuffer(buf, dtype=torch.float32).reshape(shape)
