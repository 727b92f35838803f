"""The plan's frozen values: the output tensors, their inputs, and the plan that holds them.

:func:`~mergekit_like.plan.build.build_plan` makes them; every later stage only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergekit_like.io.catalog import ModelCatalog
from mergekit_like.methods import MethodParams
from mergekit_like.plan.output_spec import OutputSpec
from mergekit_like.plan.vocab import VocabPlan
from mergekit_like.recipe.loading import LoadedRecipe

COPY = "copy"  # pseudo-method: non-float tensors are copied from the first input


@dataclass(frozen=True)
class TensorRef:
    """One input tensor: which model (index into ``Plan.models``) and which name."""

    model: int
    name: str


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor and everything needed to compute it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # output safetensors dtype, e.g. 'BF16'
    method: str
    inputs: tuple[TensorRef, ...]
    base: TensorRef | None
    model_params: tuple[MethodParams, ...]
    params: MethodParams | None
    layer: int | None
    vocab_sources: tuple[TensorRef, ...] | None = None  # set: rows are mapped by token first
    #: the recipe's ``dtype``, else (mergekit) the promotion of the input dtypes, e.g. 'BF16'
    compute: str = "F32"

    @property
    def nbytes(self) -> int:
        from mergekit_like.io.safetensors_header import DTYPE_SIZES

        n = DTYPE_SIZES[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Plan:
    """Everything the executor and writer need; built from headers only."""

    recipe: LoadedRecipe
    models: tuple[ModelCatalog, ...]
    tensors: tuple[PlannedTensor, ...]
    compute_dtype: str  # recipe dtype name, e.g. 'float32': the widest tensor's compute
    output: OutputSpec
    warnings: tuple[str, ...] = ()
    vocab: VocabPlan | None = None

    @property
    def read_bytes(self) -> int:
        refs = {r for t in self.tensors
                for r in (*t.inputs, *([t.base] if t.base else []), *(t.vocab_sources or ()))}
        return sum(self.models[r.model].tensors[r.name].nbytes for r in refs)

    @property
    def write_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)
