"""One step's tensors: read its inputs, run its merge method, check the result is finite."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from mergekit_like.errors import MergeError
from mergekit_like.execute.steps import Step
from mergekit_like.execute.vocab_remap import read_remapped
from mergekit_like.io.reader import torch_dtype
from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.plan.tensors import COPY, Plan, PlannedTensor, TensorRef

if TYPE_CHECKING:
    import torch

    from mergekit_like.io.safetensors_header import TensorInfo

    Inputs = tuple[list[torch.Tensor], torch.Tensor | None]
    Read = Callable[[TensorInfo, str, tuple[int, int] | None, str], torch.Tensor]


def load_inputs(plan: Plan, step: Step, compute: str, read: Read) -> Inputs:
    """Read one step's inputs (and base) in ``compute`` (the tensor's compute dtype).

    A copied tensor is read whole in its own dtype; a tensor whose rows are mapped by token
    into the output vocabulary is read whole and remapped.
    """
    pt = step.pt

    def info(ref: TensorRef) -> TensorInfo:
        return plan.models[ref.model].tensors[ref.name]

    if pt.method == COPY:
        ref = pt.inputs[0]
        return [read(info(ref), ref.name, None, info(ref).dtype)], None
    if pt.vocab_sources is not None:
        assert plan.vocab is not None
        return read_remapped(pt, plan.vocab, lambda r: read(info(r), r.name, None, compute))
    tensors = [read(info(r), r.name, step.rows, compute) for r in pt.inputs]
    base = read(info(pt.base), pt.base.name, step.rows, compute) if pt.base else None
    return tensors, base


def method_failed(pt: PlannedTensor, exc: Exception) -> MergeError:
    """The one-line error of a merge method that raised on a tensor."""
    return MergeError(f"tensor {pt.name!r}: merge method {pt.method!r} failed: "
                      f"{str(exc).splitlines()[0]}")


def merge_inputs(plan: Plan, step: Step, inputs: Inputs, ctx: TensorContext,
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
        raise method_failed(pt, exc) from None
    out = out.to(torch_dtype(pt.dtype))
    if not allow_nonfinite and out.is_floating_point() and not all_finite(out):
        raise_nonfinite(plan, pt, tensors, base)
    return out


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether no entry of a float tensor is NaN or Inf.

    A finite sum proves it in one pass without a temporary (any NaN or Inf makes the sum NaN
    or Inf); only a sum that overflows falls back to the entrywise check. About 10x cheaper
    than ``isfinite().all()`` on CPU, which costs more than a linear merge's arithmetic.
    """
    import torch

    acc = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return math.isfinite(float(tensor.sum(dtype=acc))) or bool(tensor.isfinite().all())


def raise_nonfinite(plan: Plan, pt: PlannedTensor, tensors: list[torch.Tensor],
                    base: torch.Tensor | None) -> None:
    """Raise the error for a NaN or Inf result: the input that holds one, else the method."""
    refs = [*pt.inputs, *([pt.base] if pt.base is not None else [])]
    for ref, t in zip(refs, [*tensors, *([base] if base is not None else [])], strict=True):
        if not bool(t.isfinite().all()):
            raise MergeError(f"model {plan.models[ref.model].ref!r}: tensor {ref.name!r} holds "
                             "NaN or Inf; pass --allow-nonfinite to merge it anyway")
    raise MergeError(f"tensor {pt.name!r}: merge method {pt.method!r} produced NaN or Inf "
                     "(check its parameters); pass --allow-nonfinite to write it anyway")
