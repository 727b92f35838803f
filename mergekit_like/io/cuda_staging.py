"""Moving a merge's steps to a CUDA device and their results back, overlapped with compute.

On ``--device cuda`` every step's inputs take this path (:class:`CudaStaging`):

1. the I/O thread reads the stored bytes with ``pread`` straight into page-locked (pinned)
   host memory (:meth:`~mergekit_like.io.reader.TensorReader.read_bytes`): one copy from the
   page cache;
2. it queues a non-blocking host-to-device copy of those bytes, in the file's dtype (half
   the bytes of float32 for bfloat16), and the conversion to the compute dtype, on an
   upload stream of its own; the pinned block is reused only once its copy is done
   (PyTorch's caching host allocator records the copy);
3. the compute stream waits for that upload (an event, not the host) before the step
   runs, so the next step's upload overlaps the current step's compute;
4. each result is copied back non-blocking into pinned memory on the compute stream, and
   the writer waits for that copy's event on the I/O thread, never the compute thread.

The NaN/Inf check of a result travels the same way: its float32 sum is copied back with
the result and checked by the writer (:class:`Outbound`), so no step stalls the compute
thread on a device-to-host round trip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mergekit_like.io.reader import TensorReader, torch_dtype
from mergekit_like.io.safetensors_header import TensorInfo

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Outbound:
    """A result on its way to the writer: ``tensor`` on the host once ``ready`` has fired.

    ``finite_sum``: a float32/float64 sum of the result still to check for NaN/Inf (None
    when the result was checked when it was computed, or must not be).
    """

    tensor: torch.Tensor
    ready: torch.cuda.Event | None = None
    finite_sum: torch.Tensor | None = None

    def wait(self) -> torch.Tensor:
        """The host tensor, once its copy from the device is complete."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensor

    def finite(self) -> bool:
        """Whether the result holds no NaN or Inf (call after :meth:`wait`)."""
        if self.finite_sum is None or math.isfinite(float(self.finite_sum)):
            return True
        # the sum overflowed or the result holds NaN/Inf: look at every entry
        return not self.tensor.is_floating_point() or bool(self.tensor.isfinite().all())


class CudaStaging:
    """Uploads step inputs to one CUDA device and downloads results (see the module doc).

    Create it on the compute thread: the stream current there is the compute stream.
    :meth:`uploading`, :meth:`read` and :meth:`hand_over` run on the I/O thread;
    :meth:`wait` and :meth:`download` on the compute thread.
    """

    def __init__(self, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.compute = torch.cuda.current_stream(self.device)
        self.upload = torch.cuda.Stream(self.device)

    @contextmanager
    def uploading(self) -> Iterator[None]:
        """Queue the device work of a load (copies, conversions) on the upload stream."""
        import torch

        with torch.cuda.stream(self.upload):
            yield

    def read(self, reader: TensorReader, info: TensorInfo, name: str,
             rows: tuple[int, int] | None, dtype: str) -> torch.Tensor:
        """Rows ``rows`` of a tensor as ``dtype`` on the device (inside :meth:`uploading`).

        Safetensors data goes through pinned memory in the file's dtype; LoRA-adapted
        tensors and pickled checkpoints through the reader's ordinary (blocking) path.
        """
        from mergekit_like.io.lora import LoraTensorInfo

        if isinstance(info, LoraTensorInfo) or info.file.suffix != ".safetensors":
            return reader.read(info, name, rows=rows, dtype=dtype, device=self.device)
        r0, r1 = rows if rows is not None else (0, info.shape[0] if info.shape else 1)
        shape = (r1 - r0, *info.shape[1:]) if info.shape else ()
        host = reader.read_bytes(info, rows, pin=True)
        raw = host.to(self.device, non_blocking=True)
        del host  # the caching host allocator keeps the block until the copy is done
        return raw.view(torch_dtype(info.dtype)).reshape(shape).to(torch_dtype(dtype))

    def hand_over(self, tensors: Sequence[torch.Tensor | None]) -> torch.cuda.Event:
        """Mark loaded tensors as used by the compute stream; the event of their upload."""
        for t in tensors:
            if t is not None and t.device.type == "cuda":
                # allocated on the upload stream: not to be reused before compute is done
                t.record_stream(self.compute)
        return self.upload.record_event()

    def wait(self, event: torch.cuda.Event) -> None:
        """Make the compute stream wait for an upload (the host does not wait)."""
        self.compute.wait_event(event)

    def download(self, out: torch.Tensor, check_finite: bool) -> Outbound:
        """Queue the copy of a device result into pinned host memory; returns at once."""
        import torch

        if out.device.type != "cuda":
            return Outbound(out)
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        total = None
        if check_finite and out.is_floating_point():
            acc = torch.float64 if out.dtype == torch.float64 else torch.float32
            total = torch.empty((), dtype=acc, pin_memory=True)
            total.copy_(out.sum(dtype=acc), non_blocking=True)
        return Outbound(host, self.compute.record_event(), total)
