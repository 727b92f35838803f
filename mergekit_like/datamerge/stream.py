"""Reading the ingredients' tensors and statistics for one merged tensor, bounded in memory.

A data-driven merge takes, for each output tensor, that tensor of each of the K ingredients
(and of each one's statistics file). Reading all K at once holds K copies of the largest
tensor (the embedding) and K of its statistics; here they are read one ingredient at a
time, with plain ``pread`` (no memory map), and a tensor larger than :data:`CHUNK_BYTES`
(float32) is taken in row ranges where the formula is elementwise (Fisher's weighted mean,
the plain mean). The output tensor is filled range by range, so memory holds the output
tensor, the running sums of one range and one ingredient's range of tensor and statistics.

Example::

    merged = fisher_tensor(ingredients, i, files, scales, epsilon=1e-6)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from mergekit_like.datamerge.cache import StatsFile
from mergekit_like.datamerge.solve import fisher_sums, plain_sum
from mergekit_like.soups.ingredients import Ingredients

if TYPE_CHECKING:
    import torch

CHUNK_BYTES = 64 * 2**20  # float32 bytes of one ingredient's row range read at a time

Rows = tuple[int, int] | None  # a row range [r0, r1) of the first dimension; None: whole


def row_ranges(shape: Sequence[int]) -> list[Rows]:
    """The row ranges a tensor of ``shape`` is merged in: ``[None]`` (whole) when its
    float32 bytes fit :data:`CHUNK_BYTES`, else ranges of at most that many bytes."""
    if not shape:
        return [None]
    row_bytes = 4 * math.prod(shape[1:])
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    if step >= shape[0]:
        return [None]
    return [(r, min(r + step, shape[0])) for r in range(0, shape[0], step)]


def read_rows(ing: Ingredients, k: int, index: int, rows: Rows) -> torch.Tensor:
    """Rows ``rows`` of tensor ``index`` of ingredient ``k`` as float32 (whole if None)."""
    if rows is None:
        return ing.read(k, index)
    ref = ing.tensors[index].inputs[k]
    info = ing.plan.models[ref.model].tensors[ref.name]
    ing.disk_reads += 1
    return ing.reader.read(info, ref.name, rows=rows, dtype="float32")


def _fill(shape: Sequence[int], parts: Iterator[tuple[Rows, torch.Tensor]]) -> torch.Tensor | None:
    """One tensor of ``shape`` from its row ranges' values (a single whole one as it is);
    None when ``parts`` gives nothing."""
    import torch

    out = None
    for rows, value in parts:
        if rows is None:
            return value
        if out is None:
            out = torch.empty(tuple(shape), dtype=torch.float32)
        out[rows[0] : rows[1]] = value
    return out


def mean_tensor(ing: Ingredients, index: int, scales: Sequence[float] | None) -> torch.Tensor:
    """``sum_k s_k theta_k / sum_k s_k`` of tensor ``index`` (uniform when ``scales`` is
    None), range by range, one ingredient at a time."""
    scales = [1.0] * ing.count if scales is None else list(scales)
    shape = ing.tensors[index].shape

    def parts() -> Iterator[tuple[Rows, torch.Tensor]]:
        for rows in row_ranges(shape):
            pairs = ((read_rows(ing, k, index, rows), s) for k, s in enumerate(scales))
            yield rows, plain_sum(pairs) / sum(scales)

    merged = _fill(shape, parts())
    assert merged is not None
    return merged


def fisher_tensor(
    ing: Ingredients,
    index: int,
    files: Sequence[StatsFile],
    scales: Sequence[float],
    epsilon: float,
) -> tuple[torch.Tensor, bool]:
    """Fisher's weighted mean of tensor ``index`` (``solve.fisher_merge``'s numbers), range
    by range; and whether some model has no Fisher for it (then it is the plain mean, and
    the report lists it). A tensor whose floored Fishers sum to zero somewhere is the plain
    mean too, unlisted, as ``fisher_merge`` does it."""
    name, shape = ing.tensors[index].name, ing.tensors[index].shape
    if any(name not in f for f in files):
        return mean_tensor(ing, index, scales), True
    zero = [False]

    def parts() -> Iterator[tuple[Rows, torch.Tensor]]:
        for rows in row_ranges(shape):
            triples = (
                (read_rows(ing, k, index, rows), f.get(name, rows), s)
                for k, (f, s) in enumerate(zip(files, scales, strict=True))
            )
            num, den = fisher_sums(triples, epsilon)
            if not bool((den > 0).all()):
                zero[0] = True
                return
            yield rows, num.div_(den)

    merged = _fill(shape, parts())
    if zero[0] or merged is None:
        return mean_tensor(ing, index, scales), False
    return merged, False
