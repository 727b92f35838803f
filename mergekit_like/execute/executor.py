"""Running a plan: read, merge and write one tensor (or row chunk) at a time.

The executor computes in each tensor's compute dtype on the chosen device, frees every input
right after use, and hands each result to the writer, which streams it into its place in
the output shard. Memory therefore stays bounded by the largest step, not the model.

Work is a sequence of steps (a tensor, or a row chunk of one for elementwise methods). A
method that needs figures over the whole tensor first (a trim threshold, norms: its
``MergeMethod.stats``) gets that many statistics passes over the same row chunks before
the merge pass, so no step ever holds a whole large tensor. A single background thread
overlaps I/O with compute: while step ``i`` is merged, it reads
the inputs of step ``i + 1`` and writes the result of step ``i - 1``. At most one step is
read ahead and one result is waiting to be written, so memory stays bounded; a step whose
inputs exceed the chunk budget is not read ahead but after the previous step is freed.

On a GPU (:mod:`~mergekit_like.io.cuda_staging`) reads and writes get a thread each, a
tensor read in several passes keeps its chunks on the GPU between them when they fit, and
``max_device_bytes`` bounds the GPU working set (:func:`~mergekit_like.execute.steps.fit_device`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mergekit_like.execute.global_trim import context_bounds, model_trim_bounds
from mergekit_like.execute.memory import HeapTrimmer, tune_allocator
from mergekit_like.execute.pipeline import run_pipeline
from mergekit_like.execute.placement import GpuPlacement, HostPlacement
from mergekit_like.execute.rounds import StatsRounds
from mergekit_like.execute.steps import (
    DEFAULT_CHUNK_BYTES,
    Step,
    fit_device,
    keep_budget,
    read_ahead_fits,
)
from mergekit_like.execute.tensor_step import load_inputs, merge_inputs, raise_nonfinite
from mergekit_like.io.cuda_staging import Outbound
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.safetensors_header import DTYPE_SIZES
from mergekit_like.io.writer import ShardWriter
from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.methods.kernels import Kernels, choose_mode
from mergekit_like.plan.tensors import COPY, Plan, PlannedTensor

if TYPE_CHECKING:
    from mergekit_like.execute.placement import Loaded
    from mergekit_like.execute.tensor_step import Inputs
    from mergekit_like.methods.spec import TensorStats


@dataclass(frozen=True)
class ExecOptions:
    """How to run a plan: device, seed for random methods, chunk size, progress output.

    ``prefetch``: read ahead and write behind on a background thread (same bytes either way).
    ``kernels``: run the task-arithmetic family's passes eagerly, compiled, or ``auto``
    (:func:`~mergekit_like.methods.kernels.choose_mode`); same bytes either way.
    ``max_device_bytes``: on a GPU, the most memory the merge's tensors may take there
    (:func:`~mergekit_like.execute.steps.fit_device`): chunks shrink to fit, and a step that
    cannot fit runs on the CPU.
    """

    device: str = "cpu"
    seed: int = 0
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    progress: bool = True
    prefetch: bool = True
    allow_nonfinite: bool = False
    kernels: Literal["auto", "eager", "compiled"] = "auto"
    max_device_bytes: int | None = None


def execute(
    plan: Plan,
    reader: TensorReader,
    writer: ShardWriter,
    options: ExecOptions,
    on_tensor: Callable[[PlannedTensor], None] | None = None,
    *,
    skip: Collection[str] = (),
) -> None:
    """Compute every planned tensor and write it; ``on_tensor`` is called after each.

    ``skip`` names tensors already written (a resumed run): they are not computed, but
    still count where the whole plan matters (``model_wide_trim`` ranks every tensor).

    With ``options.prefetch`` one background thread reads the next step's inputs and writes
    the previous step's result while the current step computes (:func:`run_pipeline`); the
    reader and the writer are only ever used by one thread at a time. On a GPU, reads and
    writes get a thread each, and data moves through pinned memory on side streams
    (:mod:`~mergekit_like.io.cuda_staging`). ``on_tensor`` is
    called once a tensor's last chunk is written (on the writing thread); every
    write has completed when ``execute`` returns. The tensors handed to a merge method are
    fresh copies that nothing else holds, so a method may update them in place.
    """
    tune_allocator()
    Executor(plan, reader, writer, options, on_tensor, frozenset(skip)).run()


class Executor:
    """One run of a plan: its steps, where they run, and the three stages of each step.

    :meth:`load` runs on the I/O thread, :meth:`merge` on the compute thread, :meth:`write`
    on the writing thread (:func:`~mergekit_like.execute.pipeline.run_pipeline`).
    """

    def __init__(self, plan: Plan, reader: TensorReader, writer: ShardWriter,
                 options: ExecOptions, on_tensor: Callable[[PlannedTensor], None] | None,
                 skip: frozenset[str]) -> None:
        self.plan, self.reader, self.writer, self.options = plan, reader, writer, options
        self.on_tensor = on_tensor
        self.bounds = None
        if any(getattr(pt.params, "model_wide_trim", False) for pt in plan.tensors):
            self.bounds = model_trim_bounds(plan, reader, plan.compute_dtype, options.device,
                                            options.chunk_bytes)
        self.kernels = Kernels(choose_mode(options.kernels, options.device, sum(
            math.prod(pt.shape) * (len(pt.inputs) + 1) for pt in plan.tensors
            if pt.name not in skip and pt.method != COPY and REGISTRY[pt.method].kernels)))
        self.rounds = StatsRounds(self._new_stats)
        gpu = options.device.startswith("cuda")
        self.chunk, steps = fit_device(plan, options.chunk_bytes,
                                       options.max_device_bytes if gpu else None,
                                       self._round_count)
        self.steps = [s for s in steps if s.pt.name not in skip]
        self.place = (GpuPlacement(plan, reader, options.device, keep_budget(
            options.device, options.max_device_bytes, self.steps, self.chunk))
            if gpu else HostPlacement(plan, reader, options.device))
        self.trim_heap = HeapTrimmer()
        self.done = 0

    def run(self) -> None:
        """Merge and write every step, with a progress bar."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.plan.write_bytes, unit="B", unit_scale=True,
                        unit_divisor=1024, desc="merging", disable=not self.options.progress,
                        dynamic_ncols=True)
        try:
            run_pipeline(self.steps, self.load, self.merge, self.write,
                         prefetch=self.options.prefetch,
                         read_ahead=lambda step: read_ahead_fits(step, self.chunk),
                         split_io=self.place.split_io)
        finally:
            self.bar.close()

    def context(self, pt: PlannedTensor, stats: TensorStats | None = None,
                start: int = 0) -> TensorContext:
        """What a merge method is told besides the tensors."""
        trim = context_bounds(pt, self.bounds) if self.bounds is not None else None
        return TensorContext(pt.name, self.options.seed, trim_bounds=trim, stats=stats,
                             start=start, kernels=self.kernels)

    def _new_stats(self, pt: PlannedTensor) -> TensorStats | None:
        factory = None if pt.method == COPY else REGISTRY[pt.method].stats
        if factory is None:
            return None
        return factory(pt.shape, DTYPE_SIZES[pt.compute] * 8, pt.model_params, pt.params,
                       self.context(pt))

    def _round_count(self, pt: PlannedTensor) -> int:
        stats = self._new_stats(pt)
        return stats.rounds if stats is not None else 0

    def load(self, step: Step) -> Loaded | None:
        """A step's inputs, or None for a pass not needed (or left to :meth:`merge`)."""
        kept = self.place.kept(step)
        if kept is not None:
            return kept
        if not self.rounds.wanted(step):  # on the I/O thread: at worst, in vain
            return None
        if not self.place.on_device(step) and self.rounds.deferred(step):
            return None
        return self.place.read(step)

    def merge(self, step: Step, loaded: Loaded | None) -> Outbound | None:
        """Run a statistics pass over a step (nothing to write), or merge it."""
        inputs = self.place.ready(loaded) if loaded is not None else None
        stats = self.rounds.current(step)
        if step.round >= 0:
            assert stats is not None
            if stats.wants(step.round):
                self.rounds.observe(step, stats, *(inputs or self._read_own(step)))
            return None
        assert inputs is not None
        on_device = self.place.on_device(step)  # the NaN/Inf check waits for the copy back
        out = merge_inputs(self.plan, step, inputs, self.context(step.pt, stats, step.start),
                           self.options.allow_nonfinite or on_device)
        self.rounds.merged(step)
        if step.last:
            self.trim_heap()
        return self.place.send(step, out, not self.options.allow_nonfinite)

    def write(self, step: Step, outbound: Outbound | None) -> None:
        """Write a merged step into its place in the output shard."""
        if outbound is None:
            return
        out = outbound.wait()
        if not outbound.finite():  # name the culprit: read the inputs again, on this thread
            raise_nonfinite(self.plan, step.pt, *self._read_own(step))
        self.writer.write(step.pt.name, out, step.offset)
        self.bar.update(out.numel() * out.element_size())
        if step.last:
            self.done += 1
            self.bar.set_postfix_str(f"{self.done}/{len(self.plan.tensors)} tensors",
                                     refresh=False)
            if self.on_tensor is not None:
                self.on_tensor(step.pt)

    def _read_own(self, step: Step) -> Inputs:
        """Read a step's inputs on the calling thread, with a reader of its own (host)."""
        with TensorReader() as own:
            return load_inputs(self.plan, step, step.pt.compute, lambda info, name, rows,
                               dtype: own.read(info, name, rows=rows, dtype=dtype))
