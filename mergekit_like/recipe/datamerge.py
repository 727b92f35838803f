"""The data-driven merge methods (Fisher, RegMean, AdaMerging) and their ``datamerge:`` options.

Torch-free: ``merge validate`` checks these fields without loading any heavy library. The
methods themselves run in :mod:`mergekit_like.datamerge`; their data is the recipe's
``evaluation:`` block (its val split gives the examples, and the merged model is scored on
val and test afterwards).

Example::

    merge_method: regmean
    models: [{model: ft-0}, {model: ft-1}]
    evaluation: {task: classification, data: data.npz}
    datamerge: {num_examples: 128, alpha: 0.95}
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from mergekit_like.recipe.soups import EvaluationConfig


class DataMergeParams(BaseModel):
    """Options shared by every data-driven method."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_examples: int = Field(
        64,
        gt=0,
        description="examples of the val split the "
        "statistics (or the coefficients) are computed on",
    )
    batch_size: int | None = Field(
        default=None, gt=0, description="examples per forward pass (default: evaluation.batch_size)"
    )
    cache: bool = Field(
        True,
        description="keep statistics in the user cache "
        "($MERGEKIT_LIKE_CACHE, else $XDG_CACHE_HOME/mergekit_like) and reuse "
        "them",
    )


class FisherParams(DataMergeParams):
    """Fisher merging (Matena & Raffel, 2022); models[i].parameters.weight scales model i."""

    sample_labels: bool = Field(
        False,
        description="labels sampled from each model's own "
        "predictions (the Fisher) instead of the data's labels (the "
        "empirical Fisher)",
    )
    epsilon: float = Field(
        1e-6,
        ge=0,
        description="floor of every Fisher entry (a tensor "
        "no example moves is then the plain mean)",
    )
    seed: int = Field(0, description="seed of sample_labels")
    hold: Literal["memory", "disk"] = Field(
        "memory",
        description="memory: one pass over the examples holds every parameter's Fisher sums "
        "(the model's float32 bytes); disk: a group of whole layers at a time (at most a "
        "quarter of those bytes), each written to the statistics file when done (a pass "
        "per group: several times the time; the same numbers)",
    )


class RegMeanParams(DataMergeParams):
    """RegMean (Jin et al., 2023) and RegMean++."""

    alpha: float = Field(
        0.95,
        ge=0,
        le=1,
        description="scale of the Gram matrices' "
        "off-diagonal entries (1: the exact least-squares merge)",
    )
    plusplus: bool = Field(
        False,
        description="RegMean++: each layer's inputs are taken "
        "through the already merged earlier layers",
    )


class AdaMergingParams(DataMergeParams):
    """AdaMerging (Yang et al., 2024): coefficients on the task vectors, learned by
    minimising the prediction entropy on unlabeled inputs."""

    granularity: Literal["task", "layer"] = Field(
        "task",
        description="one coefficient per task vector, or one per tensor of each "
        "task vector (layer-wise)",
    )
    init: float = Field(0.3, ge=0, le=1, description="initial value of every coefficient")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    steps: int = Field(100, gt=0, description="optimisation steps (one batch each)")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="adam (the paper's) or plain gradient descent"
    )
    seed: int = Field(0, description="seed of the batch order")
    hold: Literal["memory", "disk"] = Field(
        "memory",
        description="memory: every ingredient kept in memory while learning (in its "
        "checkpoint's float type); disk: read again from the files at every step (memory "
        "for one tensor of each; time for K + 1 model reads a step, twice)",
    )


@dataclass(frozen=True)
class DataMergeMethod:
    """A registered data-driven method: ``merge_method`` name, one line for ``merge
    methods``, the model of its ``datamerge:`` block, and whether it needs ``base_model``."""

    name: str
    summary: str
    params: type[DataMergeParams]
    base: Literal["required", "unused"] = "unused"

    def describe(self) -> str:
        """A few lines for ``merge methods``: summary and ``datamerge:`` options."""
        lines = [f"{self.name}: {self.summary}", "    needs an evaluation: block (its data)"]
        if self.base == "required":
            lines.append("    needs base_model")
        for field, info in self.params.model_fields.items():
            doc = f" - {info.description}" if info.description else ""
            lines.append(f"    datamerge.{field} (default {info.default!r}){doc}")
        return "\n".join(lines)


_METHODS = (
    DataMergeMethod(
        "fisher",
        "each ingredient weighted by its diagonal Fisher information "
        "(mean squared log-likelihood gradients)",
        FisherParams,
    ),
    DataMergeMethod(
        "regmean",
        "linear layers solved in closed form from their inputs' Gram "
        "matrices; other tensors averaged",
        RegMeanParams,
    ),
    DataMergeMethod(
        "adamerging",
        "task-vector coefficients learned by minimising prediction entropy on unlabeled inputs",
        AdaMergingParams,
        base="required",
    ),
)

DATAMERGE_METHODS: MappingProxyType[str, DataMergeMethod] = MappingProxyType(
    {m.name: m for m in _METHODS}
)


def datamerge_options_schema() -> dict[str, Any]:
    """JSON Schema of the ``datamerge:`` block: the options of any data-driven method."""
    return {
        "description": "options of the data-driven method named by merge_method "
        "(`merge methods` lists them)",
        "anyOf": [m.params.model_json_schema() for m in DATAMERGE_METHODS.values()],
    }


def check_datamerge_recipe(
    merge_method: str, evaluation: EvaluationConfig | None, options: dict[str, Any] | None
) -> None:
    """Recipe-level checks: a data-driven method needs an evaluation block (its data) and
    valid ``datamerge:`` options; other methods take no ``datamerge:`` block."""
    method = DATAMERGE_METHODS.get(merge_method)
    if method is None:
        if options:
            raise PydanticCustomError(
                "datamerge",
                "datamerge: options are for {known}; merge method {got} does not use them",
                {"known": ", ".join(DATAMERGE_METHODS), "got": repr(merge_method)},
            )
        return
    if evaluation is None or evaluation.task is None:
        raise PydanticCustomError(
            "evaluation",
            "merge method {m} computes its statistics on data: add an "
            "evaluation: block with task: classification | perplexity and data:",
            {"m": repr(merge_method)},
        )
    try:
        method.params.model_validate(options or {})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise PydanticCustomError(
            "datamerge",
            "datamerge.{where}: {msg} (merge method {m})",
            {"where": where, "msg": msg, "m": repr(merge_method)},
        ) from None
