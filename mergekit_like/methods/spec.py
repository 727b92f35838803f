"""What a merge method is: a pure tensor function plus typed parameter models.

A method never opens a file. It receives the ingredient tensors of one output tensor
(already on the compute device, in the compute dtype), the base model's tensor when it
uses one, the resolved per-model and global parameters, and a :class:`TensorContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from mergekit_like.methods.draws import Draws
from mergekit_like.methods.kernels import Kernels

if TYPE_CHECKING:
    import torch


class MethodParams(BaseModel):
    """Base class of a method's parameter models: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


RECIPE_REQUIRED: dict[str, Any] = {"recipe_required": True}
"""``Field(json_schema_extra=...)`` of a parameter a recipe must set although it has a
default for direct calls: mergekit requires the task-vector family's ``weight``."""


class NoParams(MethodParams):
    """A method without parameters of this kind."""


@dataclass(frozen=True)
class TensorContext:
    """Where a method call happens: the output tensor's name and the run's seed.

    ``trim_bounds``: for magnitude trims ranked over the whole model (``model_wide_trim``),
    one ``(low, high)`` per input model, in the order of the method's ``tensors``: keep the
    task-vector entries with ``low <= |x - base| <= high`` (None for a model kept whole).
    The executor fills it from :func:`mergekit_like.execute.global_trim.model_trim_bounds`; None
    (the default) when no tensor of the plan trims over the whole model.

    ``stats`` and ``start``: when the executor merges a large tensor in row chunks, the
    method's :class:`TensorStats` (gathered over the whole tensor beforehand) and the flat
    index of the chunk's first entry. None: the method receives the whole tensor.

    ``kernels``: whether the task-arithmetic family's passes run eagerly or compiled
    (:mod:`mergekit_like.methods.kernels`); the bytes are the same either way.
    """

    name: str
    seed: int = 0
    trim_bounds: tuple[tuple[float, float] | None, ...] | None = None
    stats: TensorStats | None = None
    start: int = 0
    kernels: Kernels = field(default_factory=Kernels)

    def draws(self, model: int, numel: int) -> Draws:
        """The random draws of input ``model`` for this tensor of ``numel`` entries."""
        return Draws(self.seed, self.name, model, numel)


class TensorStats(Protocol):
    """What a method learns about a whole tensor before merging it chunk by chunk.

    ``rounds`` passes over the tensor's row chunks, in order: :meth:`observe` each chunk's
    inputs (as the method receives them), then :meth:`finish` the round. The merge calls then
    find the object in ``TensorContext.stats``, again chunk by chunk in order.
    """

    rounds: int

    def wants(self, round_: int) -> bool:
        """Whether round ``round_`` is still needed; an unwanted round is skipped."""
        ...

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None: ...

    def finish(self, round_: int) -> None: ...


S = TypeVar("S", bound=TensorStats)


def gather_whole(stats: S, tensors: Sequence[torch.Tensor], base: torch.Tensor | None) -> S:
    """``stats`` gathered over a whole tensor taken as one chunk: every wanted round, in
    order, as the executor would run them. Returns ``stats``."""
    for round_ in range(stats.rounds):
        if stats.wants(round_):
            stats.observe(round_, tensors, base, 0)
            stats.finish(round_)
    return stats


StatsFactory = Callable[
    [tuple[int, ...], int, "Sequence[Any]", Any, TensorContext], "TensorStats | None"]
"""``stats(shape, compute_bits, model_params, params, ctx)``: a fresh :class:`TensorStats`."""

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
        elementwise: the result at an element depends only on the inputs at that element
            (and on ``stats``, when given), so large tensors may be computed in row chunks;
            or a function of the global parameters saying so (a setting may rule it out).
        stats: for methods that need whole-tensor figures (a trim threshold, norms) before
            merging a chunk: builds the :class:`TensorStats` the executor gathers over the
            chunks first. Given the whole tensor (``ctx.stats`` None), the method computes
            them itself, with the same bytes.
        row_block: row chunks hold a multiple of this many rows (all but the last); or a
            function of the global parameters giving it. Sums in a fixed order over dim 0
            need whole blocks (:class:`~.reductions.ColumnSums`).
        kernels: the method's passes run through :mod:`mergekit_like.methods.kernels`, so
            compiling them (``--kernels``) speeds it up.
        held: whole-tensor copies per ingredient that the statistics passes of a row-chunked
            merge keep until the merge pass (torch-order sums need every entry at once,
            :class:`~.reductions.Gathered`); or a function of the global parameters giving
            it. Memory estimates count them.
        min_models / max_models: how many ingredients (excluding a required base).
    """

    name: str
    summary: str
    merge: MergeFunction
    params: type[MethodParams] = NoParams
    model_params: type[MethodParams] = NoParams
    base: Literal["required", "optional", "unused"] = "unused"
    elementwise: bool | Callable[[Any], bool] = False
    stats: StatsFactory | None = None
    row_block: int | Callable[[Any], int] = 1
    kernels: bool = False
    held: int | Callable[[Any], int] = 0
    min_models: int = 1
    max_models: int | None = None

    def describe(self) -> str:
        """A few lines for ``merge methods``: summary and parameters with defaults."""
        lines = [f"{self.name}: {self.summary}"]
        if self.base == "required":
            lines.append("    needs base_model")
        for label, model in (("global", self.params), ("per-model", self.model_params)):
            for key, info in model.model_fields.items():
                key = info.alias or key
                default = "required" if info.is_required() else f"default {info.default!r}"
                doc = f" - {info.description}" if info.description else ""
                lines.append(f"    {label} {key} ({default}){doc}")
        return "\n".join(lines)
