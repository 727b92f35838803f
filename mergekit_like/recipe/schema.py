"""The recipe's JSON Schema, generated from the pydantic models (schemas/recipe.schema.json)."""

from __future__ import annotations

from typing import Any

from mergekit_like.recipe.models import Recipe

SCHEMA_ID = "https://mergekit-like.dev/schemas/recipe.schema.json"


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file, for editors (yaml-language-server) and CI."""
    schema = Recipe.model_json_schema(by_alias=True)
    schema.pop("title", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "mergekit_like recipe", **schema}
