"""Reading tensor data, a row range at a time, with ``pread``.

A :class:`TensorReader` is owned by one run: it opens each ingredient file once and reads
each range straight into the tensor that holds it (one copy from the page cache; the
process's resident memory holds only the tensors being merged, never whole files). Reading
with ``pread`` rather than through a memory map is what makes a file that changes under a
run safe: a file truncated mid-merge gives a short read, reported as one line naming the
file, where a mapped page past the new end kills the process with SIGBUS, without a word.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.errors import InputError
from mergekit_like.io.safetensors_header import DTYPE_SIZES, TensorInfo

if TYPE_CHECKING:
    import torch

_BLOCK = 4 << 20  # bytes read at a time when converting dtypes on the CPU

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
        self._fds: dict[Path, int] = {}
        self._pickled: dict[Path, dict[str, Any]] = {}

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
        r0, r1 = rows if rows is not None else (0, shape[0] if shape else 1)
        out_shape = (r1 - r0, *shape[1:]) if shape else ()
        source, target = torch_dtype(info.dtype), torch_dtype(dtype or info.dtype)
        if info.file.suffix != ".safetensors":
            return self._read_pickled(info, name, rows, target, device)
        if target == source or torch.device(device).type != "cpu":
            raw = self.read_bytes(info, rows)
            return raw.view(source).to(device=device, dtype=target).reshape(out_shape)
        # converted block by block: no second buffer of the whole range in the file's dtype
        out = torch.empty(out_shape, dtype=target)
        flat, size = out.view(-1), DTYPE_SIZES[info.dtype]
        start, _ = self._span(info, rows)
        block = torch.empty(max(1, _BLOCK // size) * size, dtype=torch.uint8)
        for i in range(0, flat.numel(), block.numel() // size):
            n = min(block.numel() // size, flat.numel() - i)
            self._pread(info, block[:n * size], start + i * size)
            flat[i:i + n].copy_(block[:n * size].view(source))
        return out

    @staticmethod
    def _span(info: TensorInfo, rows: tuple[int, int] | None) -> tuple[int, int]:
        """(first byte, byte count) of rows [r0, r1) of ``info`` in its file."""
        row_bytes = DTYPE_SIZES[info.dtype]
        for d in info.shape[1:]:
            row_bytes *= d
        r0, r1 = rows if rows is not None else (0, info.shape[0] if info.shape else 1)
        return info.start + r0 * row_bytes, (r1 - r0) * row_bytes if info.shape else info.nbytes

    def _pread(self, info: TensorInfo, into: torch.Tensor, offset: int) -> None:
        """Fill the uint8 tensor ``into`` from ``info.file`` at ``offset``; a short read (the
        file shrank under the run) is one line naming the file."""
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        view = memoryview(into.numpy())
        done, count = 0, into.numel()
        while done < count:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise InputError(f"{info.file}: changed while being read: it ends at byte "
                                 f"{offset + done}, its header puts tensor data up to byte "
                                 f"{info.end}; rerun once the file is complete")
            done += n

    def read_bytes(self, info: TensorInfo, rows: tuple[int, int] | None = None, *,
                   pin: bool = False) -> torch.Tensor:
        """The stored bytes of ``info`` (rows [r0, r1)) as a flat uint8 CPU tensor.

        Read with ``pread`` straight into the tensor: one copy from the page cache, no
        mapping. ``pin``: the tensor is in page-locked memory, ready for a non-blocking copy
        to a GPU. Safetensors files only (``info.file``); the dtype conversion is the
        caller's.
        """
        import torch

        start, count = self._span(info, rows)
        out = torch.empty(count, dtype=torch.uint8, pin_memory=pin)
        self._pread(info, out, start)
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
        """Close every file. The reader must not be used afterwards."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._pickled.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
