"""Slices: the tensors before the first layer and after the last one, as mergekit plans them.

Embeddings come from the first slice's models, the final norm and the output head from the
last slice's; gradients there are read at t = 0 with the first/last slice's parameters, and a
one-layer slice's layer is read at t = 1.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mergekit_like.plan.build import build_plan
from mergekit_like.recipe.loading import load_recipe
from tests.conftest import load_tensors, write_recipe


def _plan(tmp_path: Path, text: str):
    return build_plan(load_recipe(write_recipe(tmp_path, text)))


def _sources(plan, name: str) -> list[tuple[str, str]]:
    t = next(t for t in plan.tensors if t.name == name)
    return [(plan.models[r.model].path.name, r.name) for r in t.inputs]


def test_frankenmerge_takes_head_and_final_norm_from_the_last_slice(
    tmp_path, llama4_family, run_cli
):
    f = llama4_family
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: passthrough
slices:
  - sources: [{{model: {f["a"]}, layer_range: [0, 2]}}]
  - sources: [{{model: {f["b"]}, layer_range: [1, 4]}}]
dtype: float32
""",
    )
    res = run_cli(recipe, tmp_path / "out")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    a, b = load_tensors(f["a"]), load_tensors(f["b"])
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(out["model.norm.weight"], b["model.norm.weight"])
    assert torch.equal(out["lm_head.weight"], b["lm_head.weight"])
    assert not torch.equal(a["model.norm.weight"], b["model.norm.weight"])
    for i, (model, j) in enumerate([(a, 0), (a, 1), (b, 1), (b, 2), (b, 3)]):
        for tail in (".self_attn.q_proj.weight", ".post_attention_layernorm.weight"):
            assert torch.equal(out[f"model.layers.{i}{tail}"], model[f"model.layers.{j}{tail}"])


def test_gradients_at_the_ends_follow_the_first_and_last_slice(tmp_path, llama4_family):
    f = llama4_family
    plan = _plan(
        tmp_path,
        f"""
merge_method: linear
slices:
  - sources:
      - {{model: {f["a"]}, layer_range: [0, 2], parameters: {{weight: [0.9, 0.5]}}}}
      - {{model: {f["b"]}, layer_range: [0, 2], parameters: {{weight: 0.1}}}}
  - sources:
      - {{model: {f["b"]}, layer_range: [3, 4], parameters: {{weight: [0.2, 0.6]}}}}
      - {{model: {f["a"]}, layer_range: [3, 4], parameters: {{weight: [0.3, 0.7]}}}}
""",
    )

    def weights(name: str) -> list[float]:
        t = next(t for t in plan.tensors if t.name == name)
        return [p.weight for p in t.model_params]

    # before the layers: the first slice, t = 0
    assert _sources(plan, "model.embed_tokens.weight") == [
        ("a", "model.embed_tokens.weight"),
        ("b", "model.embed_tokens.weight"),
    ]
    assert weights("model.embed_tokens.weight") == [0.9, 0.1]
    # the layers: t = j / (length - 1); a one-layer slice is read at t = 1
    assert weights("model.layers.0.mlp.up_proj.weight") == [0.9, 0.1]
    assert weights("model.layers.1.mlp.up_proj.weight") == [0.5, 0.1]
    assert weights("model.layers.2.mlp.up_proj.weight") == [0.6, 0.7]
    # after the layers: the last slice's models and parameters, t = 0
    for name in ("model.norm.weight", "lm_head.weight"):
        assert _sources(plan, name) == [("b", name), ("a", name)]
        assert weights(name) == [0.2, 0.3]


def test_models_recipe_reads_gradients_at_t0_outside_the_layers(tmp_path, llama4_family):
    f = llama4_family
    plan = _plan(
        tmp_path,
        f"""
merge_method: linear
models:
  - {{model: {f["a"]}, parameters: {{weight: [0.2, 0.8]}}}}
  - {{model: {f["b"]}, parameters: {{weight: 1.0}}}}
""",
    )
    got = {t.name: t.model_params[0].weight for t in plan.tensors}
    assert got["model.embed_tokens.weight"] == 0.2
    assert got["model.norm.weight"] == 0.2
    assert got["lm_head.weight"] == 0.2
    assert got["model.layers.0.mlp.up_proj.weight"] == 0.2
    assert abs(got["model.layers.1.mlp.up_proj.weight"] - 0.4) < 1e-12
    assert got["model.layers.3.mlp.up_proj.weight"] == 0.8


def test_last_slice_with_more_sources_than_the_first_uses_its_first_ones(tmp_path, llama4_family):
    """mergekit pairs the last slice's models with as many inputs as the first slice has."""
    f = llama4_family
    plan = _plan(
        tmp_path,
        f"""
merge_method: linear
slices:
  - sources:
      - {{model: {f["b"]}, layer_range: [0, 2]}}
  - sources:
      - {{model: {f["a"]}, layer_range: [2, 4]}}
      - {{model: {f["b"]}, layer_range: [2, 4]}}
parameters: {{weight: 1.0}}
""",
    )
    assert _sources(plan, "lm_head.weight") == [("a", "lm_head.weight")]
    assert _sources(plan, "model.layers.2.mlp.up_proj.weight") == [
        ("a", "model.layers.2.mlp.up_proj.weight"),
        ("b", "model.layers.2.mlp.up_proj.weight"),
    ]
