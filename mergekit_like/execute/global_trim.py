"""Magnitude trims ranked over the whole model (``model_wide_trim``): the pre-pass.

mergekit trims each tensor of a task vector on its own: a tensor keeps its
``int(density * n)`` largest ``|x - base|``. The TIES paper ranks each model's whole task
vector at once: one threshold per model, the ``int(density * N)``-th largest magnitude over
all ``N`` entries of that model in the tensors the merge covers (a tensor merged twice, as
slices may do, counts twice). With ``model_wide_trim: true`` (ties, breadcrumbs,
breadcrumbs_ties) that threshold is found here, before the merge, and every entry with
``|x - base| >= threshold`` is kept. Breadcrumbs gets two bounds per model: the largest and
the smallest magnitude it keeps after dropping the top ``int(gamma * N)`` and the bottom.

The search is exact in bounded memory: the magnitudes, in the compute dtype, are read again
tensor by tensor (row chunks), and their bit patterns (ordered as the non-negative floats are)
are radix-selected 16 bits per pass with a 65536-bin histogram: 2 passes over the data for
float32, 1 for float16/bfloat16, 4 for float64. The magnitudes are the very values the merge
method ranks (``x - base`` in the compute dtype, on the same device), so the kept entries are
exactly those the threshold selects.

Example (as the executor does)::

    bounds = model_trim_bounds(plan, reader, "float32", "cpu")
    ctx = TensorContext(pt.name, seed, trim_bounds=context_bounds(pt, bounds))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mergekit_like.io.reader import TensorReader, torch_dtype
from mergekit_like.methods.radix import BINS, DIGIT, add_counts, magnitude_bits
from mergekit_like.plan.tensors import COPY, Plan, PlannedTensor
from mergekit_like.plan.trims import model_trims, model_wide_tensors

if TYPE_CHECKING:
    import torch

Bounds = tuple[float, float]  # keep low <= |x - base| <= high
ModelBounds = tuple[Bounds | None, ...]  # one per plan.models index; None: trimmed per tensor
DEFAULT_CHUNK_BYTES = 64 * 2**20


def model_trim_bounds(plan: Plan, reader: TensorReader, compute_dtype: str,
                      device: str | torch.device = "cpu",
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ModelBounds:
    """Each model's kept-magnitude bounds over the tensors that trim over the whole model.

    One entry per ``plan.models`` index: ``(low, high)`` keeps ``low <= |x - base| <= high``
    (``high`` is ``inf`` for ties; ``low`` is ``inf`` when nothing is kept), None where the
    model is not ranked (kept whole, emptied, or no such tensor). Reads every such tensor
    once per 16 bits of the compute dtype, ``chunk_bytes`` of rows per input at a time.
    Raises PlanError first when a model's density (or gamma) varies by tensor.
    """
    import torch

    trims = model_trims(plan)
    bounds: list[Bounds | None] = [None] * len(plan.models)
    if not trims:
        return tuple(bounds)
    dtype = torch_dtype(compute_dtype)
    width = torch.finfo(dtype).bits
    pts = model_wide_tensors(plan)

    def magnitudes() -> Iterator[tuple[int, torch.Tensor]]:
        return _magnitudes(plan, pts, set(trims), reader, compute_dtype, device, chunk_bytes)

    # pass 1: the top 16 bits of every magnitude, per model; gives N and the ranks
    first = _histograms(magnitudes(), {(m, -1) for m in trims}, width - DIGIT, width)
    targets: dict[tuple[int, int], tuple[int, int]] = {}  # (model, rank) -> (prefix, rank left)
    for model, trim in trims.items():
        n = int(first[(model, -1)].sum())
        for rank in trim.ranks(n):
            if rank:
                targets[(model, rank)] = _descend(first[(model, -1)], -1, rank)
    for shift in range(width - 2 * DIGIT, -1, -DIGIT):  # further passes: 16 bits each
        want = {(m, prefix) for (m, _), (prefix, _) in targets.items()}
        hists = _histograms(magnitudes(), want, shift, width)
        targets = {key: _descend(hists[(key[0], prefix)], prefix, left)
                   for key, (prefix, left) in targets.items()}
    for model, trim in trims.items():
        n_low, n_high = trim.ranks(int(first[(model, -1)].sum()))
        low = _value(targets[(model, n_low)][0], dtype) if n_low else math.inf
        high = _value(targets[(model, n_high)][0], dtype) if n_high else math.inf
        bounds[model] = (low, high)
    return tuple(bounds)


def context_bounds(pt: PlannedTensor, bounds: ModelBounds | None
                   ) -> tuple[Bounds | None, ...] | None:
    """``TensorContext.trim_bounds`` for ``pt``: its inputs' bounds in order, or None."""
    if bounds is None or pt.method == COPY or not getattr(pt.params, "model_wide_trim", False):
        return None
    return tuple(bounds[ref.model] for ref in pt.inputs)


def _magnitudes(plan: Plan, pts: list[PlannedTensor], models: set[int], reader: TensorReader,
                compute: str, device: str | torch.device,
                chunk_bytes: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(model index, flat ``|x - base|`` in the compute dtype) for each input, chunk by chunk."""
    def info(ref):  # noqa: ANN001, ANN202
        return plan.models[ref.model].tensors[ref.name]

    def read(ref, rows=None):  # noqa: ANN001, ANN202
        return reader.read(info(ref), ref.name, rows=rows, dtype=compute, device=device)

    itemsize = torch_dtype(compute).itemsize
    for pt in pts:
        wanted = [(j, r.model) for j, r in enumerate(pt.inputs) if r.model in models]
        if not wanted:
            continue
        assert pt.base is not None, "model_wide_trim methods need a base model"
        if pt.vocab_sources is not None:  # rows mapped by token, as the executor does
            from mergekit_like.execute.vocab_remap import read_remapped

            assert plan.vocab is not None
            tensors, base = read_remapped(pt, plan.vocab, read)
            assert base is not None
            for j, model in wanted:
                yield model, (tensors[j] - base).abs().reshape(-1)
            del tensors, base
            continue
        n_rows = pt.shape[0] if pt.shape else 1
        row_elems = math.prod(pt.shape[1:])
        step = max(1, chunk_bytes // max(1, row_elems * itemsize))
        for r0 in range(0, n_rows, step):
            rows = (r0, min(n_rows, r0 + step)) if pt.shape else None
            base = read(pt.base, rows)
            for j, model in wanted:
                yield model, (read(pt.inputs[j], rows) - base).abs().reshape(-1)
            del base


def _histograms(chunks: Iterator[tuple[int, torch.Tensor]], want: set[tuple[int, int]],
                shift: int, width: int) -> dict[tuple[int, int], torch.Tensor]:
    """Per (model, prefix): counts of bits ``[shift, shift + 16)`` among the magnitudes whose
    higher bits equal ``prefix`` (-1: every magnitude). CPU int64 tensors of 65536 bins."""
    import torch

    prefixes: dict[int, set[int]] = {}
    for model, prefix in want:
        prefixes.setdefault(model, set()).add(prefix)
    hists: dict[tuple[int, int], torch.Tensor] = {}
    for model, mags in chunks:
        if model not in prefixes:
            continue
        bits = magnitude_bits(mags)
        high = bits >> (shift + DIGIT) if shift + DIGIT < width else None
        for prefix in prefixes[model]:
            sel = bits if prefix < 0 or high is None else bits[high == prefix]
            key = (model, prefix)
            if key not in hists:
                hists[key] = torch.zeros(BINS, dtype=torch.int64, device=bits.device)
            add_counts(hists[key], (sel >> shift) & (BINS - 1))
    return {key: hists[key].cpu() if key in hists else torch.zeros(BINS, dtype=torch.int64)
            for key in want}


def _descend(hist: torch.Tensor, prefix: int, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th largest (1-based) entry: (prefix extended by it, rank
    within that bin)."""
    import torch

    from_top = hist.flip(0).cumsum(0)
    i = int(torch.searchsorted(from_top, torch.tensor(rank, dtype=from_top.dtype)))
    digit = BINS - 1 - i
    above = int(from_top[i]) - int(hist[digit])
    return (max(prefix, 0) << DIGIT) | digit, rank - above


def _value(pattern: int, dtype: torch.dtype) -> float:
    """The float of ``dtype`` whose bit pattern (sign bit clear) is ``pattern``."""
    import torch

    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    return float(torch.tensor([pattern], dtype=ints).view(dtype)[0])
