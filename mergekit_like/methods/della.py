"""DELLA (Deep et al., 2024): MagPrune, a random drop that spares large entries.

Within each row of a task vector (dimension 1; a 1-D tensor is one row), entries are
ranked by magnitude and kept with probability rising linearly from ``density - epsilon``
(smallest) to ``density + epsilon`` (largest), as mergekit's ``della_magprune``. Draws come
from the tensor's seeded generator. ``della`` then elects signs as TIES and normalises by
default; ``della_linear`` adds the task vectors. ``lambda`` scales the result.

Rescaling, as for DARE: mergekit's default keeps each task vector's L1 norm; the paper
divides each kept entry by its own keep probability ``p_i`` (``rescale_by_probability``).
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from mergekit_like.methods.dare import RandomTrimParams
from mergekit_like.methods.spec import RECIPE_REQUIRED, MergeMethod, MethodParams
from mergekit_like.methods.task_arithmetic import family_merge


class DellaParams(RandomTrimParams):
    normalize: bool = Field(True, description="divide by the sum of the agreeing weights")


class DellaModelParams(MethodParams):
    weight: float = Field(1.0, json_schema_extra=RECIPE_REQUIRED,
                          description="scale of this model's task vector")
    density: float = Field(1.0, ge=0.0, le=1.0, description="mean fraction of entries kept")
    epsilon: float = Field(0.15, ge=0.0, validate_default=True,
                           description="spread of keep probabilities: density - epsilon "
                           "(smallest) to density + epsilon (largest)")

    @field_validator("epsilon")
    @classmethod
    def _inside_unit(cls, value: float, info: ValidationInfo) -> float:
        density = info.data.get("density")
        if density is not None and 0.0 < density < 1.0 and not (
                0.0 < density - value and density + value < 1.0):
            raise PydanticCustomError(
                "epsilon", "density - epsilon and density + epsilon must lie strictly between "
                "0 and 1 (density {density}, epsilon {epsilon})",
                {"density": density, "epsilon": value})
        return value


DELLA = MergeMethod(
    name="della",
    summary="DELLA: magnitude-ranked random drop (MagPrune), rescale, elect signs as TIES",
    **family_merge(trim="della", consensus="sum"),
    params=DellaParams,
    model_params=DellaModelParams,
    base="required",
)

DELLA_LINEAR = MergeMethod(
    name="della_linear",
    summary="DELLA: magnitude-ranked random drop (MagPrune), rescale, add",
    **family_merge(trim="della"),
    params=RandomTrimParams,
    model_params=DellaModelParams,
    base="required",
)
