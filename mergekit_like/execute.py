"""Running a plan: read, merge and write one tensor (or row chunk) at a time.

The executor computes in the plan's compute dtype on the chosen device, frees every input
right after use, and hands each result to the writer, which streams it into its place in
the output shard. Memory therefore stays bounded by the largest chunk, not the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mergekit_like.errors import MergeError
from mergekit_like.io.reader import TensorReader, torch_dtype
from mergekit_like.io.safetensors_header import DTYPE_SIZES, RECIPE_DTYPES
from mergekit_like.io.writer import ShardWriter
from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.plan import COPY, Plan, PlannedTensor

if TYPE_CHECKING:
    import torch

DEFAULT_CHUNK_BYTES = 64 * 2**20  # per input, in the compute dtype


@dataclass(frozen=True)
class ExecOptions:
    """How to run a plan: device, seed for random methods, chunk size, progress output."""

    device: str = "cpu"
    seed: int = 0
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    progress: bool = True


def row_chunks(pt: PlannedTensor, compute_itemsize: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """Row ranges to compute ``pt`` in: one range unless the method is elementwise and large."""
    rows = pt.shape[0] if pt.shape else 1
    if (pt.method == COPY or not pt.shape or pt.vocab_sources is not None
            or not REGISTRY[pt.method].elementwise):
        return [(0, rows)]
    row_elems = 1
    for d in pt.shape[1:]:
        row_elems *= d
    step = max(1, chunk_bytes // max(1, row_elems * compute_itemsize))
    return [(r, min(rows, r + step)) for r in range(0, rows, step)] or [(0, 0)]


def estimate_peak_bytes(plan: Plan, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Largest working set of any step: inputs, base and result in the compute dtype."""
    size = DTYPE_SIZES[RECIPE_DTYPES[plan.compute_dtype]]
    peak = 0
    for pt in plan.tensors:
        r0, r1 = row_chunks(pt, size, chunk_bytes)[0]
        elems = (r1 - r0)
        for d in pt.shape[1:]:
            elems *= d
        n_in = len(pt.inputs) + (1 if pt.base else 0)
        # inputs + result + one temporary per input (task vectors, masks)
        peak = max(peak, elems * size * (2 * n_in + 2))
    return peak


def execute(
    plan: Plan,
    reader: TensorReader,
    writer: ShardWriter,
    options: ExecOptions,
    on_tensor: Callable[[PlannedTensor], None] | None = None,
) -> None:
    """Compute every planned tensor and write it; ``on_tensor`` is called after each."""
    from tqdm.auto import tqdm

    compute = RECIPE_DTYPES[plan.compute_dtype]
    bar = tqdm(total=plan.write_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               desc="merging", disable=not options.progress, dynamic_ncols=True)
    try:
        for i, pt in enumerate(plan.tensors):
            _compute_tensor(plan, pt, reader, writer, compute, options)
            bar.update(pt.nbytes)
            bar.set_postfix_str(f"{i + 1}/{len(plan.tensors)} tensors", refresh=False)
            if on_tensor is not None:
                on_tensor(pt)
    finally:
        bar.close()


def _compute_tensor(plan: Plan, pt: PlannedTensor, reader: TensorReader, writer: ShardWriter,
                    compute: str, options: ExecOptions) -> None:
    def info(ref):  # noqa: ANN001, ANN202
        return plan.models[ref.model].tensors[ref.name]

    if pt.method == COPY:
        ref = pt.inputs[0]
        writer.write(pt.name, reader.read(info(ref), ref.name))
        return
    method = REGISTRY[pt.method]
    out_size = DTYPE_SIZES[pt.dtype]
    row_bytes = out_size
    for d in pt.shape[1:]:
        row_bytes *= d
    ctx = TensorContext(pt.name, options.seed)
    for r0, r1 in row_chunks(pt, DTYPE_SIZES[compute], options.chunk_bytes):
        rows = (r0, r1) if pt.shape else None
        if pt.vocab_sources is not None:  # rows mapped by token into the output vocabulary
            from mergekit_like.vocab_remap import read_remapped

            assert plan.vocab is not None
            tensors, base = read_remapped(pt, plan.vocab, lambda r: reader.read(
                info(r), r.name, dtype=compute, device=options.device))
        else:
            tensors = [reader.read(info(r), r.name, rows=rows, dtype=compute,
                                   device=options.device) for r in pt.inputs]
            base = (reader.read(info(pt.base), pt.base.name, rows=rows, dtype=compute,
                                device=options.device) if pt.base else None)
        try:
            out = method.merge(tensors, base, pt.model_params, pt.params, ctx)
        except (ValueError, RuntimeError) as exc:
            raise MergeError(f"tensor {pt.name!r}: merge method {pt.method!r} failed: "
                             f"{str(exc).splitlines()[0]}") from None
        del tensors, base
        writer.write(pt.name, _to_dtype(out, pt.dtype), r0 * row_bytes)
        del out


def _to_dtype(tensor: torch.Tensor, dtype: str) -> torch.Tensor:
    return tensor.to(torch_dtype(dtype))
