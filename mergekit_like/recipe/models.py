"""The recipe: a validated, frozen description of a merge, in mergekit's format.

A recipe names the ingredient models (``models:`` or layer ``slices:``), the merge method
and its parameters. Parameter values are scalars, gradients (lists of numbers interpolated
over the layer position) or filter lists (``[{filter: self_attn, value: 0.3}, {value: 0.5}]``).

This module must not import torch: ``merge validate`` and ``merge --help`` stay instant.

Example::

    from mergekit_like.recipe.models import Recipe
    recipe = Recipe.model_validate({"merge_method": "linear", "models": [{"model": "a"}]})
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mergekit_like.recipe.datamerge import (
    check_datamerge_recipe,
    datamerge_options_schema,
)
from mergekit_like.recipe.soups import (
    SOUP_METHODS,
    EvaluationConfig,
    check_soup_recipe,
    soup_options_schema,
)

DType = Literal["float32", "float16", "bfloat16", "float64"]

_SCALAR_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "boolean"}]}
_GRADIENT_SCHEMA: dict[str, Any] = {"type": "array", "items": {"type": "number"}, "minItems": 1}
_FILTER_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "filter": {"type": "string", "description": "substring of the tensor name"},
            "value": {"anyOf": [_SCALAR_SCHEMA, _GRADIENT_SCHEMA]},
        },
        "required": ["value"],
        "additionalProperties": False,
    },
}
PARAM_VALUE_SCHEMA: dict[str, Any] = {
    "description": "a number or boolean; a gradient (list of numbers interpolated over the "
    "layers); or a list of {filter, value} entries, first match wins, no filter = default",
    "anyOf": [_SCALAR_SCHEMA, _GRADIENT_SCHEMA, _FILTER_SCHEMA],
}


def _scalar(value: Any) -> float | bool:
    """Accept a number, a bool or a numeric string (YAML reads ``1e-5`` as a string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise PydanticCustomError(
                "param_value", "expected a number, got {got}", {"got": repr(value)}
            ) from None
    else:
        raise PydanticCustomError(
            "param_value", "expected a number, got {got}", {"got": repr(value)}
        )
    if not math.isfinite(number):
        raise PydanticCustomError("param_value", "expected a finite number, got {got}",
                                  {"got": repr(value)})
    return number


def _gradient(values: list[Any]) -> tuple[float, ...]:
    if not values:
        raise PydanticCustomError("param_value", "a gradient needs at least one number", {})
    out = []
    for v in values:
        s = _scalar(v)
        if isinstance(s, bool):
            raise PydanticCustomError(
                "param_value", "a gradient holds numbers, got {got}", {"got": repr(v)}
            )
        out.append(s)
    return tuple(out)


def _param_value(value: Any) -> ParamValue:
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, dict | FilterEntry) for v in value):
            entries = []
            for i, v in enumerate(value):
                if isinstance(v, FilterEntry):
                    entries.append(v)
                    continue
                extra = set(v) - {"filter", "value"}
                if extra or "value" not in v:
                    raise PydanticCustomError(
                        "param_value",
                        "entry {i}: a filter entry has keys 'filter' (optional) and 'value'",
                        {"i": i},
                    )
                flt = v.get("filter")
                if flt is not None and not isinstance(flt, str):
                    raise PydanticCustomError(
                        "param_value", "entry {i}: filter must be a string", {"i": i}
                    )
                inner = v["value"]
                entries.append(
                    FilterEntry(
                        filter=flt,
                        value=_gradient(list(inner))
                        if isinstance(inner, list | tuple)
                        else _scalar(inner),
                    )
                )
            return tuple(entries)
        return _gradient(list(value))
    return _scalar(value)


class FilterEntry(BaseModel):
    """One entry of a filter list: applies ``value`` to tensors whose name contains ``filter``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    filter: str | None = None
    value: float | bool | tuple[float, ...]


def _dump_param(value: Any) -> Any:
    if isinstance(value, tuple):
        return [
            ({"value": _dump_param(v.value)} if v.filter is None
             else {"filter": v.filter, "value": _dump_param(v.value)})
            if isinstance(v, FilterEntry) else v
            for v in value
        ]
    return value


ParamValue = Annotated[
    float | bool | tuple[float, ...] | tuple[FilterEntry, ...],
    PlainValidator(_param_value),
    PlainSerializer(_dump_param),
    WithJsonSchema(PARAM_VALUE_SCHEMA),
]
Parameters = dict[str, ParamValue]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _none_to_empty(data: Any) -> Any:
    if isinstance(data, dict) and "parameters" in data and data["parameters"] is None:
        return {**data, "parameters": {}}
    return data


class InputModel(_Frozen):
    """An ingredient model with its own parameters."""

    model: str = Field(description="local directory or Hugging Face hub id (org/name[@revision])")
    parameters: Parameters = Field(default_factory=dict)

    _none_params = model_validator(mode="before")(_none_to_empty)


class SliceSource(_Frozen):
    """A contiguous range of layers [start, end) taken from one model."""

    model: str
    layer_range: tuple[int, int] = Field(description="[start, end): end is exclusive")
    parameters: Parameters = Field(default_factory=dict)

    _none_params = model_validator(mode="before")(_none_to_empty)

    @model_validator(mode="after")
    def _check_range(self) -> SliceSource:
        start, end = self.layer_range
        if start < 0 or end <= start:
            raise PydanticCustomError(
                "layer_range",
                "layer_range must be [start, end) with 0 <= start < end, got [{s}, {e}]",
                {"s": start, "e": end},
            )
        return self


class OutputSlice(_Frozen):
    """One block of output layers, merged from equally long layer ranges of its sources."""

    sources: list[SliceSource] = Field(min_length=1)
    parameters: Parameters = Field(default_factory=dict)

    _none_params = model_validator(mode="before")(_none_to_empty)

    @model_validator(mode="after")
    def _same_length(self) -> OutputSlice:
        lengths = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if len(lengths) > 1:
            raise PydanticCustomError(
                "layer_range", "every source of a slice needs the same number of layers, got {n}",
                {"n": sorted(lengths)},
            )
        return self


class OutputModule(_Frozen):
    """One module (layer stack) of a multi-module model: its models or slices (mergekit's)."""

    models: list[InputModel] | None = Field(default=None, min_length=1)
    slices: list[OutputSlice] | None = Field(default=None, min_length=1)
    parameters: Parameters = Field(default_factory=dict)

    _none_params = model_validator(mode="before")(_none_to_empty)

    @model_validator(mode="after")
    def _one_kind(self) -> OutputModule:
        if (self.models is None) == (self.slices is None):
            raise PydanticCustomError(
                "models_or_slices", "give exactly one of 'models' or 'slices'", {})
        return self


class TokenSource(_Frozen):
    """Where a token's embedding row comes from: zeros, or a token of a given model."""

    kind: Literal["zero", "model_token"]
    model: str | None = Field(default=None, description="model_token: the model to take it from")
    token: str | None = Field(default=None, description="model_token: the token (default: same)")

    @model_validator(mode="after")
    def _needs_model(self) -> TokenSource:
        if self.kind == "model_token" and not self.model:
            raise PydanticCustomError("token_source", "kind 'model_token' needs a 'model'", {})
        return self


class TokenSpec(_Frozen):
    """How one token's embedding and lm_head rows are made."""

    source: str | TokenSource | None = Field(
        default=None, description="a model (its row for this token), or {kind: zero} or "
        "{kind: model_token, model, token}")
    force: bool = Field(default=False, description="use the source for every model, even those "
                        "that have the token; otherwise only for models that lack it")


class TokenizerConfig(_Frozen):
    """The output vocabulary and how embedding rows are mapped into it (mergekit's block)."""

    source: str = Field(default="base", description="'union' (every model's tokens), 'base', "
                        "or a model whose tokenizer is used")
    tokens: dict[str, TokenSpec] = Field(default_factory=dict)
    pad_to_multiple_of: int | None = Field(default=None, ge=1,
                                           description="round the vocabulary size up")


class Recipe(_Frozen):
    """A merge recipe (mergekit-compatible)."""

    merge_method: str = Field(description="name of the merge method; `merge methods` lists them")
    models: list[InputModel] | None = Field(default=None, min_length=1)
    slices: list[OutputSlice] | None = Field(default=None, min_length=1)
    modules: dict[str, OutputModule] | None = Field(
        default=None, min_length=1, description="per module (layer stack) of a multi-module "
        "model, e.g. text_decoder, vision_tower: its models or slices")
    base_model: str | None = None
    parameters: Parameters = Field(default_factory=dict)
    dtype: DType | None = Field(default=None, description="compute dtype (default: as mergekit, "
                                "each tensor's input dtype, promoted: bfloat16 for bf16 models)")
    out_dtype: DType | None = Field(default=None, description="output dtype (default: the "
                                    "compute dtype)")
    tokenizer_source: str | None = Field(
        default=None, description="'union', 'base' (default), or a model whose tokenizer is used"
    )
    tokenizer: TokenizerConfig | None = Field(
        default=None, description="vocabulary merging (instead of tokenizer_source)")
    chat_template: str | None = Field(
        default=None, description="'auto', a built-in name (alpaca, chatml, llama3, mistral, "
        "exaone) or a Jinja template"
    )
    name: str | None = None
    # soups (mergekit_like/soups): held-out evaluation, and a soup method's options
    evaluation: EvaluationConfig | None = Field(
        default=None, description="held-out data and score: soup methods choose with it; any "
        "other merge is scored with it after it is written")
    soup: Annotated[dict[str, Any] | None, WithJsonSchema(soup_options_schema())] = None
    # data-driven merges (mergekit_like/datamerge): fisher, regmean, adamerging options
    datamerge: Annotated[dict[str, Any] | None,
                         WithJsonSchema(datamerge_options_schema())] = None

    _none_params = model_validator(mode="before")(_none_to_empty)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if [self.models, self.slices, self.modules].count(None) != 2:
            raise PydanticCustomError(
                "models_or_slices", "give exactly one of 'models' or 'slices' (or 'modules')", {}
            )
        if self.tokenizer is not None and self.tokenizer_source is not None:
            raise PydanticCustomError(
                "tokenizer", "give either 'tokenizer_source' or a 'tokenizer' block, not both", {}
            )
        check_soup_recipe(self.merge_method, self.evaluation, self.soup)
        check_datamerge_recipe(self.merge_method, self.evaluation, self.datamerge)
        return self

    def tokenizer_config(self) -> TokenizerConfig | None:
        """The effective vocabulary settings: the ``tokenizer`` block or ``tokenizer_source``."""
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_source is not None:
            return TokenizerConfig(source=self.tokenizer_source)
        return None

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from mergekit_like.methods import REGISTRY  # torch-free registry
        from mergekit_like.recipe.datamerge import DATAMERGE_METHODS  # torch-free too

        known = {*REGISTRY, *SOUP_METHODS, *DATAMERGE_METHODS}
        if value not in known:
            raise PydanticCustomError(
                "merge_method",
                "unknown merge method {got}; known methods: {known}",
                {"got": repr(value), "known": ", ".join(sorted(known))},
            )
        return value


    def referenced_models(self) -> list[str]:
        """Every model named by the recipe, base first, without duplicates, in order."""
        names: list[str] = [self.base_model] if self.base_model else []
        for m in self.models or []:
            names.append(m.model)
        for module in (self.modules or {}).values():
            names.extend(m.model for m in module.models or [])
            for s in module.slices or []:
                names.extend(src.model for src in s.sources)
        for s in self.slices or []:
            names.extend(src.model for src in s.sources)
        return list(dict.fromkeys(names))
