"""DARE (Yu et al., 2024): drop task-vector entries at random, rescale the survivors.

Each entry of each task vector is kept with probability ``density`` (dropped with
probability ``1 - density``), drawn from the tensor's seeded generator (``--seed`` and the
tensor name), so a merge is reproducible byte for byte.

Rescaling differs between mergekit and the paper:

- mergekit (default, ``rescale: true``): the kept entries are scaled so the task vector keeps
  its L1 norm, ``|delta|_1 / |kept|_1``, which is close to, but not exactly, ``1 / density``.
- the paper (``rescale_by_probability: true``): every kept entry is divided by ``density``
  (``1 / (1 - p)`` for drop rate ``p``), unbiased in expectation.
- ``rescale: false``: no rescaling.

``dare_ties`` then elects signs as TIES does; ``dare_linear`` adds the task vectors.
Neither normalises by default (mergekit's defaults).
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from mergekit_like.methods.spec import RECIPE_REQUIRED, MergeMethod, MethodParams
from mergekit_like.methods.task_arithmetic import TaskArithmeticParams, family_merge


class RandomTrimParams(TaskArithmeticParams):
    """Global parameters of the random-drop methods (DARE, DELLA): rescaling on by default."""

    rescale: bool = Field(True, description="rescale kept entries; by default so each task "
                          "vector keeps its L1 norm (mergekit)")
    rescale_by_probability: bool = Field(
        False, description="rescale as the papers do instead: divide each kept entry by its "
        "keep probability (1/density for DARE, 1/p_i for DELLA); needs rescale: true")

    @field_validator("rescale_by_probability")
    @classmethod
    def _needs_rescale(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("rescale") is False:
            raise PydanticCustomError(
                "rescale", "rescale_by_probability needs rescale: true", {})
        return value


class DareModelParams(MethodParams):
    weight: float = Field(1.0, json_schema_extra=RECIPE_REQUIRED,
                          description="scale of this model's task vector")
    density: float = Field(1.0, ge=0.0, le=1.0,
                           description="probability of keeping each entry (1 - drop rate)")


DARE_TIES = MergeMethod(
    name="dare_ties",
    summary="DARE: drop task-vector entries at random, rescale, then elect signs as TIES",
    **family_merge(trim="random", consensus="sum"),
    params=RandomTrimParams,
    model_params=DareModelParams,
    base="required",
)

DARE_LINEAR = MergeMethod(
    name="dare_linear",
    summary="DARE: drop task-vector entries at random, rescale, then add them",
    **family_merge(trim="random"),
    params=RandomTrimParams,
    model_params=DareModelParams,
    base="required",
)
