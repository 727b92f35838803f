"""What the executor runs: steps (a tensor, or rows of one), their memory, their device.

A plan's tensors become :class:`Step` values here, before anything is read: row chunks for
elementwise methods (:func:`row_chunks`), the statistics passes a method needs first
(:func:`plan_steps`), the working set of each step (:func:`step_peaks`), and on a GPU with
a memory limit, the chunk size that fits it and the steps that must run on the CPU
(:func:`fit_device`). Everything here is computed from the plan alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from mergekit_like.io.safetensors_header import DTYPE_SIZES, RECIPE_DTYPES
from mergekit_like.methods import REGISTRY
from mergekit_like.plan.build import COPY, Plan, PlannedTensor

# per input, in the compute dtype; 16 MiB keeps the working set (inputs, temporaries, the step
# read ahead) far below 1 GB and is as fast as larger chunks (bench/RESULTS.md)
DEFAULT_CHUNK_BYTES = 16 * 2**20


def row_chunks(pt: PlannedTensor, compute_itemsize: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """Row ranges to compute ``pt`` in: one range unless the method is elementwise and large.

    Only tensors of two or more dimensions are split (a 1-D tensor's "rows" would be single
    entries; methods such as DELLA rank within rows). Each range but the last holds a
    multiple of the method's ``row_block`` rows.
    """
    rows = pt.shape[0] if pt.shape else 1
    if not splittable(pt):
        return [(0, rows)]
    step = max(1, chunk_bytes // max(1, math.prod(pt.shape[1:]) * compute_itemsize))
    block = REGISTRY[pt.method].row_block
    block = block(pt.params) if callable(block) else block
    step = max(block, step // block * block)
    return [(r, min(rows, r + step)) for r in range(0, rows, step)] or [(0, 0)]


def splittable(pt: PlannedTensor) -> bool:
    """Whether ``pt`` may be computed in row chunks (:func:`row_chunks`)."""
    if (pt.method == COPY or len(pt.shape) < 2 or pt.shape[0] < 2
            or pt.vocab_sources is not None):
        return False
    elementwise = REGISTRY[pt.method].elementwise
    return elementwise(pt.params) if callable(elementwise) else elementwise


@dataclass(frozen=True)
class Step:
    """One unit of work: rows ``rows`` of ``pt`` (None: the whole tensor).

    ``offset`` is where the result goes, in bytes into the output tensor; ``start`` the
    flat index of the step's first entry; ``in_bytes`` the size of the step's inputs (and
    base) in the compute dtype; ``last`` marks the final chunk of a tensor (or of a round).
    ``round``: -1 for a merge step; ``r >= 0`` for a chunk of the method's statistics pass
    ``r`` over the tensor (:class:`~mergekit_like.methods.spec.TensorStats`), which writes
    nothing. ``cpu``: computed on the CPU although the run uses a GPU (:func:`fit_device`).
    """

    pt: PlannedTensor
    rows: tuple[int, int] | None
    offset: int
    in_bytes: int
    last: bool
    round: int = -1
    start: int = 0
    cpu: bool = False


def plan_steps(plan: Plan, compute_itemsize: int, chunk_bytes: int,
               rounds: Callable[[PlannedTensor], int] = lambda pt: 0) -> list[Step]:
    """Every step of ``plan`` in order: each tensor, split by :func:`row_chunks`.

    A tensor split in several chunks is preceded by ``rounds(pt)`` statistics passes over
    the same chunks (see :class:`Step`).
    """
    steps = []
    for pt in plan.tensors:
        row_elems = math.prod(pt.shape[1:])
        n_in = len(pt.inputs) + (1 if pt.base else 0)
        chunks = row_chunks(pt, compute_itemsize, chunk_bytes)
        n_rounds = rounds(pt) if len(chunks) > 1 else 0
        for round_ in [*range(n_rounds), -1]:
            for i, (r0, r1) in enumerate(chunks):
                rows = (r0, r1) if pt.shape and pt.method != COPY else None
                elems = (r1 - r0) * row_elems if pt.shape else 1
                steps.append(Step(pt, rows, r0 * row_elems * DTYPE_SIZES[pt.dtype],
                                  elems * compute_itemsize * n_in, i == len(chunks) - 1,
                                  round_, r0 * row_elems))
    return steps


def step_peaks(steps: list[Step], chunk_bytes: int) -> list[int]:
    """Each step's working set: its inputs, base, result and temporaries in the compute
    dtype, plus the next step read ahead (when it fits ``chunk_bytes`` per input) and the
    previous result being written."""
    peaks = []
    for i, step in enumerate(steps):
        n_in = max(1, len(step.pt.inputs) + (1 if step.pt.base else 0))
        # inputs + result + one temporary per input (task vectors, masks)
        own = step.in_bytes * (2 * n_in + 2) // n_in
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        ahead = nxt.in_bytes if nxt is not None and read_ahead_fits(nxt, chunk_bytes) else 0
        behind = steps[i - 1].in_bytes // max(1, len(steps[i - 1].pt.inputs) + (
            1 if steps[i - 1].pt.base else 0)) if i else 0
        peaks.append(own + ahead + behind + held_bytes(step))
    return peaks


def held_bytes(step: Step) -> int:
    """What a row-chunked step's tensor keeps whole for its method's statistics
    (``MergeMethod.held`` copies per ingredient); 0 for a step of a whole tensor."""
    pt = step.pt
    if pt.method == COPY or step.rows is None or step.rows == (0, pt.shape[0]):
        return 0
    held = REGISTRY[pt.method].held
    copies = held(pt.params) if callable(held) else held
    return copies * len(pt.inputs) * math.prod(pt.shape) * DTYPE_SIZES[pt.compute]


def read_ahead_fits(step: Step, chunk_bytes: int) -> bool:
    """Whether ``step`` may be read while the one before it runs (its inputs fit a chunk)."""
    return step.in_bytes <= chunk_bytes * max(1, len(step.pt.inputs) + (1 if step.pt.base else 0))


def estimate_peak_bytes(plan: Plan, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Largest working set of any step (:func:`step_peaks`)."""
    size = DTYPE_SIZES[RECIPE_DTYPES[plan.compute_dtype]]
    return max(step_peaks(plan_steps(plan, size, chunk_bytes), chunk_bytes), default=0)


MIN_DEVICE_CHUNK = 2**20
DEVICE_SLACK = 1.25
"""Device working sets are estimated at :func:`step_peaks` times this: the caching
allocator rounds blocks up, and an upload holds the file-dtype bytes beside the converted
tensor."""


def fit_device(plan: Plan, chunk_bytes: int, limit: int | None,
               rounds: Callable[[PlannedTensor], int] = lambda pt: 0) -> tuple[int, list[Step]]:
    """The chunk size and steps of a GPU run whose tensors must stay under ``limit`` bytes.

    Chunks are halved (down to 1 MiB) until every step of a tensor that can be split in
    rows fits; a step that still does not fit (a whole tensor of a method that cannot work
    in chunks, a huge row) is marked ``cpu`` and runs on the CPU. Copied tensors never
    touch the GPU. Without ``limit``: the plain steps, all on the GPU.
    """
    size = DTYPE_SIZES[RECIPE_DTYPES[plan.compute_dtype]]
    if limit is None:
        return chunk_bytes, plan_steps(plan, size, chunk_bytes, rounds)
    chunk = chunk_bytes
    while True:
        steps = plan_steps(plan, size, chunk, rounds)
        peaks = step_peaks(steps, chunk)
        split = [splittable(s.pt) for s in steps]
        if chunk <= MIN_DEVICE_CHUNK or all(
                p * DEVICE_SLACK <= limit for p, c in zip(peaks, split, strict=True) if c):
            break
        chunk //= 2
    # all steps of a tensor on one device: its statistics live there
    over = {s.pt.name for s, p in zip(steps, peaks, strict=True)
            if s.pt.method == COPY or p * DEVICE_SLACK > limit}
    return chunk, [replace(s, cpu=True) if s.pt.name in over else s for s in steps]


def input_bytes(pt: PlannedTensor, compute: str) -> int:
    """The size of all of ``pt``'s inputs and base in the compute dtype."""
    return math.prod(pt.shape) * (len(pt.inputs) + (1 if pt.base else 0)) * DTYPE_SIZES[compute]


KEEP_SHARE = 4
"""Without ``--max-gpu-memory``, inputs kept on the GPU between passes take at most
1/KEEP_SHARE of its memory."""


def keep_budget(device: str, limit: int | None, steps: list[Step], chunk_bytes: int) -> int:
    """GPU bytes for the inputs of a tensor kept between its passes: what ``limit`` leaves
    beside the largest GPU step's working set, or a share of the device's memory."""
    if limit is None:
        import torch

        return torch.cuda.get_device_properties(device).total_memory // KEEP_SHARE
    gpu = [p for s, p in zip(steps, step_peaks(steps, chunk_bytes), strict=True) if not s.cpu]
    return max(0, int(limit - max(gpu, default=0) * DEVICE_SLACK))
