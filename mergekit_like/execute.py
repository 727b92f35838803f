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
``max_device_bytes`` bounds the GPU working set (:func:`~mergekit_like.steps.fit_device`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mergekit_like.errors import MergeError
from mergekit_like.io.cuda_staging import CudaStaging, Outbound
from mergekit_like.io.reader import TensorReader, torch_dtype
from mergekit_like.io.safetensors_header import DTYPE_SIZES
from mergekit_like.io.writer import ShardWriter
from mergekit_like.memory import HeapTrimmer, tune_allocator
from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.methods.kernels import Kernels, choose_mode
from mergekit_like.pipeline import run_pipeline
from mergekit_like.plan import COPY, Plan, PlannedTensor
from mergekit_like.steps import (
    DEFAULT_CHUNK_BYTES,
    Step,
    fit_device,
    input_bytes,
    keep_budget,
    read_ahead_fits,
)

if TYPE_CHECKING:
    import torch

    from mergekit_like.io.safetensors_header import TensorInfo
    from mergekit_like.methods.spec import TensorStats

    Inputs = tuple[list[torch.Tensor], torch.Tensor | None]
    # inputs, base, and the event of their upload to the GPU (None on the CPU)
    Loaded = tuple[list[torch.Tensor], torch.Tensor | None, torch.cuda.Event | None]
    Read = Callable[[TensorInfo, str, tuple[int, int] | None, str], torch.Tensor]


@dataclass(frozen=True)
class ExecOptions:
    """How to run a plan: device, seed for random methods, chunk size, progress output.

    ``prefetch``: read ahead and write behind on a background thread (same bytes either way).
    ``kernels``: run the task-arithmetic family's passes eagerly, compiled, or ``auto``
    (:func:`~mergekit_like.methods.kernels.choose_mode`); same bytes either way.
    ``max_device_bytes``: on a GPU, the most memory the merge's tensors may take there
    (:func:`~mergekit_like.steps.fit_device`): chunks shrink to fit, and a step that
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
    from tqdm.auto import tqdm

    bounds = None
    if any(getattr(pt.params, "model_wide_trim", False) for pt in plan.tensors):
        from mergekit_like.global_trim import model_trim_bounds

        bounds = model_trim_bounds(plan, reader, plan.compute_dtype, options.device,
                                   options.chunk_bytes)
    skipped = frozenset(skip)
    kernels = Kernels(choose_mode(options.kernels, options.device, sum(
        math.prod(pt.shape) * (len(pt.inputs) + 1) for pt in plan.tensors
        if pt.name not in skipped and pt.method != COPY and REGISTRY[pt.method].kernels)))

    def context(pt: PlannedTensor, stats: TensorStats | None = None,
                start: int = 0) -> TensorContext:
        trim = None
        if bounds is not None:
            from mergekit_like.global_trim import context_bounds

            trim = context_bounds(pt, bounds)
        return TensorContext(pt.name, options.seed, trim_bounds=trim, stats=stats, start=start,
                             kernels=kernels)

    def new_stats(pt: PlannedTensor) -> TensorStats | None:
        factory = None if pt.method == COPY else REGISTRY[pt.method].stats
        if factory is None:
            return None
        return factory(pt.shape, DTYPE_SIZES[pt.compute] * 8, pt.model_params, pt.params,
                       context(pt))

    def rounds(pt: PlannedTensor) -> int:
        stats = new_stats(pt)
        return stats.rounds if stats is not None else 0

    staging = CudaStaging(options.device) if options.device.startswith("cuda") else None
    chunk, steps = fit_device(plan, options.chunk_bytes,
                              options.max_device_bytes if staging else None, rounds)
    steps = [s for s in steps if s.pt.name not in skipped]
    bar = tqdm(total=plan.write_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               desc="merging", disable=not options.progress, dynamic_ncols=True)
    done = 0
    gathering: dict[str, TensorStats | None] = {}  # stats of the tensor being chunked
    trim_heap = HeapTrimmer()

    def wanted(step: Step) -> bool:  # a statistics pass the method still needs
        stats = gathering.get(step.pt.name)
        return step.round < 0 or stats is None or stats.wants(step.round)

    def read_host(info: TensorInfo, name: str, rows: tuple[int, int] | None,
                  dtype: str) -> torch.Tensor:
        return reader.read(info, name, rows=rows, dtype=dtype, device=options.device
                           if staging is None else "cpu")

    def on_gpu(step: Step) -> bool:
        return staging is not None and not step.cpu and step.pt.method != COPY

    # GPU only: a tensor read in several passes keeps its chunks on the GPU from the first
    # statistics pass to the merge pass, when they fit: read once instead of once a pass
    budget = (keep_budget(options.device, options.max_device_bytes, steps, chunk)
              if staging is not None else 0)
    kept: dict[tuple[str, tuple[int, int] | None], Loaded] = {}
    finished: dict[str, int] = {}  # per tensor, the last statistics round finished

    def deferred_read(step: Step) -> bool:
        # the first chunk of a round after the first is loaded while the round before ends:
        # bet that it settles the method's need (a right guess, a bracket that held), and
        # let run() read the chunk itself should the round be wanted after all
        return (step.round > 0 and not on_gpu(step)
                and finished.get(step.pt.name, -1) < step.round - 1)

    def load(step: Step) -> Loaded | None:
        key = (step.pt.name, step.rows)
        if key in kept:  # statistics passes only read these inputs; the merge pass takes them
            return kept[key] if step.round >= 0 else kept.pop(key)
        if not wanted(step) or deferred_read(step):  # on the I/O thread: at worst, in vain
            return None
        if not on_gpu(step):
            return *_load(plan, step, step.pt.compute, read_host), None
        assert staging is not None
        with staging.uploading():
            tensors, base = _load(plan, step, step.pt.compute, lambda info, name, rows, dtype:
                                  staging.read(reader, info, name, rows, dtype))
        loaded = tensors, base, staging.hand_over([*tensors, base])
        if step.round >= 0 and input_bytes(step.pt, step.pt.compute) <= budget:
            kept[key] = loaded
        return loaded

    def run(step: Step, loaded: Loaded | None) -> Outbound | None:
        pt = step.pt
        if loaded is not None and loaded[2] is not None:
            assert staging is not None
            staging.wait(loaded[2])
        inputs = loaded[:2] if loaded is not None else None
        chunked = step.rows is not None and step.rows != (0, pt.shape[0])
        if chunked and pt.name not in gathering:
            gathering[pt.name] = new_stats(pt)
        stats = gathering.get(pt.name)
        if step.round >= 0:  # a statistics pass: nothing to write
            assert stats is not None
            if not stats.wants(step.round):
                return None
            if inputs is None:  # a read deferred_read bet against
                with TensorReader() as own:
                    inputs = _load(plan, step, step.pt.compute, lambda info, name, rows, dtype:
                                   own.read(info, name, rows=rows, dtype=dtype))
            try:
                stats.observe(step.round, *inputs, step.start)
                if step.last:
                    stats.finish(step.round)
                    finished[pt.name] = step.round
            except (ValueError, RuntimeError) as exc:
                raise MergeError(f"tensor {pt.name!r}: merge method {pt.method!r} failed: "
                                 f"{str(exc).splitlines()[0]}") from None
            return None
        assert inputs is not None
        # on a GPU the NaN/Inf check waits for the copy back, on the I/O thread
        deferred = on_gpu(step)
        out = _merge(plan, step, inputs, context(pt, stats, step.start),
                     options.allow_nonfinite or deferred)
        if step.last:
            gathering.pop(pt.name, None)
            trim_heap()
        if deferred:
            assert staging is not None
            return staging.download(out, not options.allow_nonfinite)
        return Outbound(out)

    def write(step: Step, outbound: Outbound | None) -> None:
        nonlocal done
        if outbound is None:
            return
        out = outbound.wait()
        if not outbound.finite():  # name the culprit: read the inputs again, on this thread
            with TensorReader() as own:
                _raise_nonfinite(plan, step.pt, *_load(
                    plan, step, step.pt.compute, lambda info, name, rows, dtype: own.read(
                        info, name, rows=rows, dtype=dtype)))
        writer.write(step.pt.name, out, step.offset)
        bar.update(out.numel() * out.element_size())
        if step.last:
            done += 1
            bar.set_postfix_str(f"{done}/{len(plan.tensors)} tensors", refresh=False)
            if on_tensor is not None:
                on_tensor(step.pt)

    try:
        run_pipeline(steps, load, run, write, prefetch=options.prefetch,
                     read_ahead=lambda step: read_ahead_fits(step, chunk),
                     split_io=staging is not None)  # a GPU leaves the cores to I/O
    finally:
        bar.close()


def _load(plan: Plan, step: Step, compute: str, read: Read) -> Inputs:
    """Read one step's inputs (and base) in ``compute`` (the tensor's compute dtype)."""
    pt = step.pt

    def info(ref):  # noqa: ANN001, ANN202
        return plan.models[ref.model].tensors[ref.name]

    if pt.method == COPY:
        ref = pt.inputs[0]
        return [read(info(ref), ref.name, None, info(ref).dtype)], None
    if pt.vocab_sources is not None:  # rows mapped by token into the output vocabulary
        from mergekit_like.vocab_remap import read_remapped

        assert plan.vocab is not None
        return read_remapped(pt, plan.vocab, lambda r: read(info(r), r.name, None, compute))
    tensors = [read(info(r), r.name, step.rows, compute) for r in pt.inputs]
    base = read(info(pt.base), pt.base.name, step.rows, compute) if pt.base else None
    return tensors, base


def _merge(plan: Plan, step: Step, inputs: Inputs, ctx: TensorContext,
           allow_nonfinite: bool = False) -> torch.Tensor:
    """Run the method on one step's inputs; the result in the output dtype.

    Unless ``allow_nonfinite``, a result holding NaN or Inf is an error that names the
    ingredient it came from, or the method when every input was finite.
    """
    pt = step.pt
    tensors, base = inputs
    if pt.method == COPY:
        return tensors[0]
    try:
        out = REGISTRY[pt.method].merge(tensors, base, pt.model_params, pt.params, ctx)
    except (ValueError, RuntimeError) as exc:
        raise MergeError(f"tensor {pt.name!r}: merge method {pt.method!r} failed: "
                         f"{str(exc).splitlines()[0]}") from None
    out = out.to(torch_dtype(pt.dtype))
    if not allow_nonfinite and out.is_floating_point() and not all_finite(out):
        _raise_nonfinite(plan, pt, tensors, base)
    return out


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether no entry of a float tensor is NaN or Inf.

    A finite sum proves it in one pass without a temporary (any NaN or Inf makes the sum NaN
    or Inf); only a sum that overflows falls back to the entrywise check. About 10x cheaper
    than ``isfinite().all()`` on CPU, which costs more than a linear merge's arithmetic.
    """
    import math

    import torch

    acc = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return math.isfinite(float(tensor.sum(dtype=acc))) or bool(tensor.isfinite().all())


def _raise_nonfinite(plan: Plan, pt: PlannedTensor, tensors: list[torch.Tensor],
                     base: torch.Tensor | None) -> None:
    refs = [*pt.inputs, *([pt.base] if pt.base is not None else [])]
    for ref, t in zip(refs, [*tensors, *([base] if base is not None else [])], strict=True):
        if not bool(t.isfinite().all()):
            raise MergeError(f"model {plan.models[ref.model].ref!r}: tensor {ref.name!r} holds "
                             "NaN or Inf; pass --allow-nonfinite to merge it anyway")
    raise MergeError(f"tensor {pt.name!r}: merge method {pt.method!r} produced NaN or Inf "
                     "(check its parameters); pass --allow-nonfinite to write it anyway")
