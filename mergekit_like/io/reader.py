"""Reading tensor data through memory maps, a row range at a time.

A :class:`TensorReader` is owned by one run: it maps each ingredient file read-only on first
use and releases the pages of every range it has copied (``madvise(DONTNEED)``), so the
process's resident memory holds only the tensors being merged, never whole files.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.io.safetensors_header import DTYPE_SIZES, TensorInfo

if TYPE_CHECKING:
    import torch

_PAGE = mmap.PAGESIZE


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors or recipe dtype name ('BF16', 'bfloat16')."""
    import torch

    table = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
        "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
        "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
        "float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
        "bfloat16": torch.bfloat16,
    }
    return table[name]


class TensorReader:
    """Reads tensors (or row ranges of them) from safetensors or pickled checkpoints."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}
        self._fds: dict[Path, int] = {}
        self._pickled: dict[Path, dict[str, Any]] = {}

    def _map(self, path: Path) -> mmap.mmap:
        mm = self._maps.get(path)
        if mm is None:
            fd = os.open(path, os.O_RDONLY)
            try:
                # ACCESS_COPY: private and writable for torch.frombuffer, never written back
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
            finally:
                os.close(fd)
            self._maps[path] = mm
        return mm

    def read(
        self,
        info: TensorInfo,
        name: str,
        *,
        rows: tuple[int, int] | None = None,
        dtype: str | None = None,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """Read a tensor (rows [r0, r1) of its first dimension) as ``dtype`` on ``device``.

        A LoRA-adapted tensor (:class:`~mergekit_like.io.lora.LoraTensorInfo`) comes back
        with ``scale * B @ A`` already added to the rows read.
        """
        from mergekit_like.io.lora import LoraTensorInfo, lora_delta

        out = self._read_plain(info, name, rows=rows, dtype=dtype, device=device)
        if isinstance(info, LoraTensorInfo):
            def factor(f: TensorInfo) -> torch.Tensor:
                return self._read_plain(f, name, rows=None, dtype="float32", device=device)

            delta = lora_delta(info, rows, factor, device)
            out = out.to(delta.dtype).add_(delta).to(out.dtype)
        return out

    def _read_plain(
        self,
        info: TensorInfo,
        name: str,
        *,
        rows: tuple[int, int] | None = None,
        dtype: str | None = None,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        import torch

        shape = info.shape
        row_elems = 1
        for d in shape[1:]:
            row_elems *= d
        r0, r1 = rows if rows is not None else (0, shape[0] if shape else 1)
        out_shape = (r1 - r0, *shape[1:]) if shape else ()
        target = torch_dtype(dtype) if dtype else torch_dtype(info.dtype)
        if info.file.suffix != ".safetensors":
            return self._read_pickled(info, name, rows, target, device)
        size = DTYPE_SIZES[info.dtype]
        start = info.start + r0 * row_elems * size
        count = (r1 - r0) * row_elems if shape else 1
        mm = self._map(info.file)
        if count == 0:
            return torch.empty(out_shape, dtype=target, device=device)
        view = torch.frombuffer(mm, dtype=torch_dtype(info.dtype), count=count, offset=start)
        out = view.to(device=device, dtype=target, copy=True).reshape(out_shape)
        del view
        lo = start - start % _PAGE
        hi = start + count * size
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return out

    def read_bytes(self, info: TensorInfo, rows: tuple[int, int] | None = None, *,
                   pin: bool = False) -> torch.Tensor:
        """The stored bytes of ``info`` (rows [r0, r1)) as a flat uint8 CPU tensor.

        Read with ``pread`` straight into the tensor: one copy from the page cache, no
        mapping. ``pin``: the tensor is in page-locked memory, ready for a non-blocking copy
        to a GPU. Safetensors files only (``info.file``); the dtype conversion is the
        caller's.
        """
        import torch

        row_bytes = DTYPE_SIZES[info.dtype]
        for d in info.shape[1:]:
            row_bytes *= d
        r0, r1 = rows if rows is not None else (0, info.shape[0] if info.shape else 1)
        start = info.start + r0 * row_bytes
        count = (r1 - r0) * row_bytes if info.shape else info.nbytes
        out = torch.empty(count, dtype=torch.uint8, pin_memory=pin)
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        view = memoryview(out.numpy())
        done = 0
        while done < count:
            n = os.preadv(fd, [view[done:]], start + done)
            if n <= 0:
                raise OSError(f"{info.file}: unexpected end of file at byte {start + done}")
            done += n
        return out

    def _read_pickled(self, info: TensorInfo, name: str, rows: tuple[int, int] | None,
                      target: torch.dtype, device: str | torch.device) -> torch.Tensor:
        from mergekit_like.io.pickle_checkpoint import load_bin

        state = self._pickled.get(info.file)
        if state is None:
            state = self._pickled[info.file] = load_bin(info.file)
        tensor = state[name]
        if rows is not None:
            tensor = tensor[rows[0]:rows[1]]
        return tensor.to(device=device, dtype=target, copy=True)

    def close(self) -> None:
        """Unmap every file. The reader must not be used afterwards."""
        for mm in self._maps.values():
            mm.close()
        self._maps.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._pickled.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
