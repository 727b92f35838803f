"""The ``merge evolve`` config: mergekit-evolve's ``genome``, scored by our ``evaluation:``.

Torch-free, like the recipe layer: a config is checked before any model is read. Fields of
mergekit-evolve that need lm-eval (``tasks`` naming lm-eval tasks, ``limit``,
``num_fewshot``, ...) are refused with one line saying what to write instead.

Example::

    genome:
      models: [ft-a, ft-b]
      merge_method: ties
      base_model: base
      layer_granularity: 2       # one weight and density per 2 layers per model
    evaluation:
      task: classification
      data: data.npz
    search: {generations: 8, popsize: 8, seed: 0}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from mergekit_like.errors import Loc, Problem, RecipeError
from mergekit_like.recipe.loading import apply_overrides, check_plain, locate, parse_yaml
from mergekit_like.recipe.models import DType
from mergekit_like.recipe.soups import EvaluationConfig
from mergekit_like.recipe.yaml_lines import read_recipe_text

#: the recipe parameters each method's genome searches, in genotype order (weight first)
METHOD_PARAMS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "linear": ("weight",), "task_arithmetic": ("weight",), "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
})
NEEDS_BASE = ("task_arithmetic", "ties", "dare_ties")

#: mergekit-evolve fields that need lm-eval or a GPU runtime, and what to write instead
UNSUPPORTED: MappingProxyType[str, str] = MappingProxyType({
    "tasks": "lm-eval tasks cannot run here; score candidates with an evaluation: block "
             "instead (task: classification | perplexity, or python: package.module:function "
             "with --allow-code)",
    "limit": "an lm-eval option, not supported; use evaluation.max_examples",
    "num_fewshot": "an lm-eval option, not supported (evaluation: scores held-out data)",
    "shuffle": "an lm-eval option, not supported (evaluation: scores held-out data)",
    "apply_chat_template": "an lm-eval option, not supported (evaluation: scores held-out "
                           "data)",
    "fewshot_as_multiturn": "an lm-eval option, not supported (evaluation: scores held-out "
                            "data)",
})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GenomeConfig(_Frozen):
    """What is searched: mergekit-evolve's ``genome`` (slerp is not supported)."""

    models: list[str] = Field(min_length=1, description="the models whose mixture is searched")
    merge_method: Literal["linear", "task_arithmetic", "ties", "dare_ties"] = Field(
        description="linear and task_arithmetic search weights; ties and dare_ties weights "
        "and densities")
    base_model: str | None = Field(default=None, description="required by task_arithmetic, "
                                   "ties and dare_ties")
    tokenizer_source: str | None = None
    layer_granularity: int = Field(
        0, ge=0, description="layers per group, each group with its own parameters (0: one "
        "group for the whole model); must divide the number of layers")
    normalize: bool | None = Field(
        default=None, description="the merge's normalize (default: true for linear, ties, "
        "dare_ties, as mergekit-evolve)")
    allow_negative_weights: bool = Field(False, description="false: weights are |x|")
    filters: list[str] | None = Field(
        default=None, description="tensor-name filters, each with its own parameters (plus "
        "one set for the other tensors)")
    smooth: bool = Field(False, description="interpolate each parameter over the layers "
                         "(a gradient) instead of one value per group")

    @model_validator(mode="after")
    def _base(self) -> GenomeConfig:
        if self.merge_method in NEEDS_BASE and self.base_model is None:
            raise PydanticCustomError("genome", "merge method {m} needs genome.base_model",
                                      {"m": repr(self.merge_method)})
        return self


class SearchConfig(_Frozen):
    """How CMA-ES searches (mergekit-evolve's command-line options, here in the file)."""

    seed: int = Field(0, ge=0, description="seed of the search: same seed, same search")
    generations: int = Field(10, gt=0, description="CMA-ES generations (ask, score, tell)")
    popsize: int | None = Field(default=None, ge=2, description="candidates per generation "
                                "(default: CMA-ES's 4 + 3 ln(parameters))")
    sigma0: float = Field(1 / 6, gt=0, description="initial step size (mergekit-evolve's)")
    max_fevals: int | None = Field(default=None, gt=0, description="stop after this many "
                                   "candidates")
    threads: int = Field(1, gt=0, description="torch CPU threads per candidate (the same on "
                         "every worker, so serial and Ray runs agree)")


class EvolveConfig(_Frozen):
    """A ``merge evolve`` config."""

    genome: GenomeConfig
    evaluation: EvaluationConfig
    search: SearchConfig = Field(default_factory=SearchConfig)
    random_init: bool = Field(False, description="start from a random genotype (seeded) "
                              "instead of equal weights and density 1")
    dtype: DType | None = Field(default=None, description="the merge's compute dtype "
                                "(default: the inputs' own; mergekit-evolve uses bfloat16)")
    out_dtype: DType | None = None
    plots: bool = Field(True, description="write evolve_report.png")


def load_evolve_config(path: Path, overrides: Sequence[str] = ()) -> EvolveConfig:
    """Read, override and validate a ``merge evolve`` config; errors name file and line."""
    data, lines = parse_yaml(read_recipe_text(path), path)
    data, touched = apply_overrides(data, overrides)
    return validate_evolve(data, path, lines, touched)


def validate_evolve(data: Any, path: Path, lines: dict[Loc, int],
                    touched: frozenset[Loc] = frozenset()) -> EvolveConfig:
    """Validate parsed config data, turning pydantic errors into located problems."""
    if not isinstance(data, dict) or "genome" not in data:
        raise RecipeError(Problem("a merge evolve config is a YAML mapping with genome: and "
                                  "evaluation:", (), path.name, 1))
    for key, why in UNSUPPORTED.items():
        if key in data:
            raise RecipeError(locate((key,), why, path, lines, touched))
    check_plain(data, path, lines, touched)
    try:
        return EvolveConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not isinstance(p, str) or "[" not in p)
            msg = {"extra_forbidden": "unknown key",
                   "missing": "required field is missing"}.get(err["type"], err["msg"])
            problems.append(locate(loc, msg, path, lines, touched))
        raise RecipeError(problems) from None
