"""What a merge method is: a pure tensor function plus typed parameter models.

A method never opens a file. It receives the ingredient tensors of one output tensor
(already on the compute device, in the compute dtype), the base model's tensor when it
uses one, the resolved per-model and global parameters, and a :class:`TensorContext`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch


class MethodParams(BaseModel):
    """Base class of a method's parameter models: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoParams(MethodParams):
    """A method without parameters of this kind."""


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the run's seed and the tensor's name.

    Random masks depend only on (seed, name), never on the order or the process that
    computes a tensor, so outputs are byte-identical however the work is scheduled.

    >>> tensor_seed(0, "model.layers.0.mlp.up_proj.weight") == tensor_seed(0, "model.layers.0.mlp.up_proj.weight")
    True
    """  # noqa: E501
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class TensorContext:
    """Where a method call happens: the output tensor's name and the run's seed.

    ``trim_bounds``: for magnitude trims ranked over the whole model (``model_wide_trim``),
    one ``(low, high)`` per input model, in the order of the method's ``tensors``: keep the
    task-vector entries with ``low <= |x - base| <= high`` (None for a model kept whole).
    The executor fills it from :func:`mergekit_like.global_trim.model_trim_bounds`; None
    (the default) when no tensor of the plan trims over the whole model.
    """

    name: str
    seed: int = 0
    trim_bounds: tuple[tuple[float, float] | None, ...] | None = None

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from (seed, tensor name), for reproducible random masks."""
        import torch

        gen = torch.Generator(device=device)
        gen.manual_seed(tensor_seed(self.seed, self.name))
        return gen


MergeFunction = Callable[
    ["Sequence[torch.Tensor]", "torch.Tensor | None", "Sequence[Any]", Any, TensorContext],
    "torch.Tensor",
]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: the recipe's ``merge_method`` value.
        summary: one line for ``merge methods``.
        merge: ``merge(tensors, base, model_params, params, ctx) -> tensor``.
        params: the global parameter model (looked up in slice, then recipe parameters).
        model_params: the per-model parameter model (model, then slice, then recipe).
        base: whether ``base_model`` is required, optional, or unused by the method.
            When required, the base is passed separately and not among ``tensors``.
        elementwise: the result at an element depends only on the inputs at that element,
            so large tensors may be computed in row chunks.
        min_models / max_models: how many ingredients (excluding a required base).
    """

    name: str
    summary: str
    merge: MergeFunction
    params: type[MethodParams] = NoParams
    model_params: type[MethodParams] = NoParams
    base: Literal["required", "optional", "unused"] = "unused"
    elementwise: bool = False
    min_models: int = 1
    max_models: int | None = None

    def describe(self) -> str:
        """A few lines for ``merge methods``: summary and parameters with defaults."""
        lines = [f"{self.name}: {self.summary}"]
        if self.base == "required":
            lines.append("    needs base_model")
        for label, model in (("global", self.params), ("per-model", self.model_params)):
            for field, info in model.model_fields.items():
                field = info.alias or field
                default = "required" if info.is_required() else f"default {info.default!r}"
                doc = f" - {info.description}" if info.description else ""
                lines.append(f"    {label} {field} ({default}){doc}")
        return "\n".join(lines)
