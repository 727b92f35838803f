"""Where a step runs: on the host (the CPU), or on a GPU through pinned, side-stream staging.

Both placements answer the executor's four questions the same way: is this step's input
already here (:meth:`HostPlacement.kept`), read it (:meth:`~HostPlacement.read`), wait until
it may be used (:meth:`~HostPlacement.ready`), and send the result towards the writer
(:meth:`~HostPlacement.send`). The GPU placement also keeps a tensor's chunks on the GPU from
its first statistics pass to its merge pass, when they fit the keep budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergekit_like.execute.steps import Step, input_bytes
from mergekit_like.execute.tensor_step import load_inputs
from mergekit_like.io.cuda_staging import CudaStaging, Outbound
from mergekit_like.io.reader import TensorReader
from mergekit_like.plan.tensors import COPY, Plan

if TYPE_CHECKING:
    import torch

    from mergekit_like.execute.tensor_step import Inputs
    from mergekit_like.io.safetensors_header import TensorInfo

    # inputs, base, and the event of their upload to the GPU (None on the host)
    Loaded = tuple[list[torch.Tensor], torch.Tensor | None, torch.cuda.Event | None]


class HostPlacement:
    """Steps merged where the reader puts them: the CPU (or the device ``device`` names)."""

    #: whether reads and writes get a thread each (a GPU leaves the cores to I/O)
    split_io = False

    def __init__(self, plan: Plan, reader: TensorReader, device: str) -> None:
        self.plan = plan
        self.reader = reader
        self.host_device = device

    def on_device(self, step: Step) -> bool:
        """Whether the step is merged on a GPU (its result comes back asynchronously)."""
        return False

    def kept(self, step: Step) -> Loaded | None:
        """The step's inputs when an earlier pass left them in place, else None."""
        return None

    def read(self, step: Step) -> Loaded:
        """Read the step's inputs in its compute dtype (on the I/O thread)."""
        return *load_inputs(self.plan, step, step.pt.compute, self._read_host), None

    def ready(self, loaded: Loaded) -> Inputs:
        """The inputs, once they may be used on the compute thread."""
        return loaded[0], loaded[1]

    def send(self, step: Step, out: torch.Tensor, check_finite: bool) -> Outbound:
        """The result on its way to the writer (already checked for NaN/Inf on the host)."""
        return Outbound(out)

    def _read_host(self, info: TensorInfo, name: str, rows: tuple[int, int] | None,
                   dtype: str) -> torch.Tensor:
        return self.reader.read(info, name, rows=rows, dtype=dtype, device=self.host_device)


class GpuPlacement(HostPlacement):
    """Steps merged on one CUDA device; copied tensors and ``cpu`` steps stay on the host.

    ``keep_bytes`` bounds the inputs of one tensor kept on the GPU between its passes.
    Create it on the compute thread (:class:`~mergekit_like.io.cuda_staging.CudaStaging`).
    """

    split_io = True

    def __init__(self, plan: Plan, reader: TensorReader, device: str, keep_bytes: int) -> None:
        super().__init__(plan, reader, "cpu")
        self.staging = CudaStaging(device)
        self.keep_bytes = keep_bytes
        self._kept: dict[tuple[str, tuple[int, int] | None], Loaded] = {}

    def on_device(self, step: Step) -> bool:
        return not step.cpu and step.pt.method != COPY

    def kept(self, step: Step) -> Loaded | None:
        """Statistics passes only read kept inputs; the merge pass takes them."""
        key = (step.pt.name, step.rows)
        if key not in self._kept:
            return None
        return self._kept[key] if step.round >= 0 else self._kept.pop(key)

    def read(self, step: Step) -> Loaded:
        if not self.on_device(step):
            return super().read(step)
        staging = self.staging
        with staging.uploading():
            tensors, base = load_inputs(self.plan, step, step.pt.compute,
                                        lambda info, name, rows, dtype:
                                        staging.read(self.reader, info, name, rows, dtype))
        loaded = tensors, base, staging.hand_over([*tensors, base])
        if step.round >= 0 and input_bytes(step.pt, step.pt.compute) <= self.keep_bytes:
            self._kept[(step.pt.name, step.rows)] = loaded
        return loaded

    def ready(self, loaded: Loaded) -> Inputs:
        if loaded[2] is not None:
            self.staging.wait(loaded[2])
        return loaded[0], loaded[1]

    def send(self, step: Step, out: torch.Tensor, check_finite: bool) -> Outbound:
        """Queue the copy back; the NaN/Inf check then waits for it, on the I/O thread."""
        if not self.on_device(step):
            return Outbound(out)
        return self.staging.download(out, check_finite)
