"""Whether the ingredients can be merged at all: the same architecture and the same width.

mergekit refuses ingredients whose architecture differs (``architectures`` or
``model_type`` in config.json) unless it runs with ``--allow-crimes``; so do we, because
a Llama and a Qwen2 of equal shapes otherwise merge into a model neither family loads as
intended. Ingredients of different hidden sizes can never be merged tensor by tensor: that
is one error naming the sizes, rather than one shape mismatch per tensor.

Called by :func:`mergekit_like.plan.build.build_plan` right after the ingredients' headers are
read, before any tensor is planned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergekit_like.errors import Loc, PlanError
from mergekit_like.io.catalog import ModelCatalog
from mergekit_like.recipe.loading import LoadedRecipe

HIDDEN_SIZE_KEYS = ("hidden_size", "n_embd", "d_model")
"""Config keys that give a model's width, looked up in order (then under text_config)."""


def architecture(config: Mapping[str, Any]) -> str | None:
    """``'LlamaForCausalLM (llama)'`` from a config.json, or None when it names neither."""
    archs = config.get("architectures")
    names = ", ".join(str(a) for a in archs) if isinstance(archs, list) and archs else None
    model_type = config.get("model_type")
    if names and model_type:
        return f"{names} ({model_type})"
    return names or (str(model_type) if model_type else None)


def hidden_size(config: Mapping[str, Any]) -> int | None:
    """The model's width from its config.json (``text_config`` for multimodal models)."""
    for cfg in (config, config.get("text_config")):
        if isinstance(cfg, Mapping):
            for key in HIDDEN_SIZE_KEYS:
                if isinstance(cfg.get(key), int):
                    return cfg[key]
    return None


def model_loc(loaded: LoadedRecipe, ref: str) -> Loc:
    """The first recipe field that names model ``ref``."""
    recipe = loaded.recipe
    if recipe.base_model == ref:
        return ("base_model",)
    for i, m in enumerate(recipe.models or []):
        if m.model == ref:
            return ("models", i, "model")
    for s, sl in enumerate(recipe.slices or []):
        for k, src in enumerate(sl.sources):
            if src.model == ref:
                return ("slices", s, "sources", k, "model")
    return ()


def check_ingredients(
    loaded: LoadedRecipe, catalogs: Sequence[ModelCatalog], allow_crimes: bool = False
) -> None:
    """Raise one :class:`PlanError` when the ingredients' widths or architectures differ.

    ``architectures`` and ``model_type`` are each compared among the models whose
    config.json has them (a checkpoint saved without ``architectures`` is not a crime).
    """
    widths = [(cat.ref, hidden_size(cat.config)) for cat in catalogs]
    _check_same(
        loaded,
        widths,
        widths,
        "hidden sizes differ",
        "models of different widths cannot be merged tensor by tensor",
    )
    if allow_crimes:
        return
    described = [(cat.ref, architecture(cat.config)) for cat in catalogs]
    for key in ("architectures", "model_type"):
        values = [(cat.ref, _hashable(cat.config.get(key))) for cat in catalogs]
        _check_same(
            loaded,
            values,
            described,
            "architectures differ",
            "mergekit refuses to mix architectures too; pass --allow-crimes to merge them anyway",
        )


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_same(
    loaded: LoadedRecipe,
    values: Sequence[tuple[str, Any]],
    shown: Sequence[tuple[str, Any]],
    what: str,
    advice: str,
) -> None:
    """Raise when the known (not None) ``values`` differ, showing each model's ``shown``."""
    known = [(ref, value) for ref, value in values if value is not None]
    if len({value for _, value in known}) <= 1:
        return
    odd = next(ref for ref, value in known if value != known[0][1])
    detail = ", ".join(f"{ref!r}: {value}" for ref, value in shown if value is not None)
    raise PlanError(loaded.problem(model_loc(loaded, odd), f"{what} ({detail}); {advice}"))
