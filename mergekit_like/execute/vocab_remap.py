"""Mapping each model's embedding rows into the output vocabulary (execute time).

Given a :class:`~mergekit_like.plan.vocab.VocabPlan`, every model holding an embedding-like tensor
gets a version with one row per output token: its own row where it has the token, else the
base model's row, else the mean of the models that have it, else zeros; ``tokens:`` overrides
last. The merge method then sees ordinary, equally shaped tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mergekit_like.plan.build import PlannedTensor, TensorRef
from mergekit_like.plan.vocab import VocabPlan

if TYPE_CHECKING:
    import torch


def remap_rows(
    vocab: VocabPlan,
    sources: dict[int, torch.Tensor],
) -> dict[int, torch.Tensor]:
    """Per model index, its tensor with rows in output-vocabulary order (see module doc)."""
    import torch

    any_t = next(iter(sources.values()))
    shape = (vocab.size, *any_t.shape[1:])
    sums = torch.zeros(shape, dtype=any_t.dtype, device=any_t.device)
    counts = torch.zeros(vocab.size, dtype=any_t.dtype, device=any_t.device)
    index = {m: torch.tensor(vocab.rows[m], dtype=torch.long, device=any_t.device)
             for m in sources}
    for m, t in sources.items():
        have = index[m] >= 0
        sums[have] += t[index[m][have]]
        counts[have] += 1
    fill = sums / counts.clamp(min=1).view(-1, *([1] * (len(shape) - 1)))
    if vocab.base is not None and vocab.base in sources:
        have = index[vocab.base] >= 0
        fill[have] = sources[vocab.base][index[vocab.base][have]]
    out = {}
    for m, t in sources.items():
        have = index[m] >= 0
        x = fill.clone()
        x[have] = t[index[m][have]]
        out[m] = x
    for o in vocab.overrides:
        if o.kind == "zero":
            value = torch.zeros(shape[1:], dtype=any_t.dtype, device=any_t.device)
        elif o.model in sources:
            value = sources[o.model][o.model_row]
        else:
            continue  # that model does not hold this tensor
        for m in out:
            if o.force or vocab.rows[m][o.row] < 0:
                out[m][o.row] = value
    return out


def read_remapped(
    pt: PlannedTensor,
    vocab: VocabPlan,
    read: Callable[[TensorRef], torch.Tensor],
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The inputs and base of ``pt``, each mapped into the output vocabulary."""
    assert pt.vocab_sources is not None
    sources = {ref.model: read(ref) for ref in pt.vocab_sources}
    mapped = remap_rows(vocab, sources)
    del sources
    tensors = [mapped[r.model].clone() for r in pt.inputs]  # methods may work in place
    base = mapped[pt.base.model] if pt.base is not None else None
    return tensors, base
