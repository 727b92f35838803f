"""The planner: tensors, inputs and parameters from headers; every plan-time error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from mergekit_like.demo import make_model, tiny_config
from mergekit_like.errors import PlanError
from mergekit_like.plan.build import COPY, build_plan
from mergekit_like.recipe.loading import load_recipe
from tests.conftest import write_recipe


def _plan(tmp_path: Path, text: str):
    return build_plan(load_recipe(write_recipe(tmp_path, text)))


def _errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(PlanError) as exc:
        _plan(tmp_path, text)
    return [str(p) for p in exc.value.problems]


def test_models_plan_lists_every_tensor_in_layer_order(tmp_path, llama_family):
    f = llama_family
    plan = _plan(tmp_path, f"""
merge_method: ties
base_model: {f['base']}
models:
  - model: {f['base']}
  - model: {f['math']}
    parameters: {{weight: [0.0, 1.0], density: 0.5}}
  - model: {f['code']}
    parameters:
      weight: 0.3
      density: [{{filter: self_attn, value: 0.2}}, {{value: 0.9}}]
parameters: {{normalize: false}}
""")
    names = [t.name for t in plan.tensors]
    header_names = set(load_file(f["base"] / "model.safetensors"))
    assert set(names) == header_names and len(names) == len(header_names)
    layers = [t.layer for t in plan.tensors]
    inner = [x for x in layers if x is not None]
    assert inner == sorted(inner) and layers[0] is None and layers[-1] is None
    assert names[0] == "model.embed_tokens.weight"
    assert names[-1] in ("model.norm.weight", "lm_head.weight")
    by_name = {t.name: t for t in plan.tensors}
    t0 = by_name["model.layers.0.self_attn.q_proj.weight"]
    t1 = by_name["model.layers.1.mlp.up_proj.weight"]
    emb = by_name["model.embed_tokens.weight"]
    base_idx = plan.tensors[0].base.model
    # the base is passed separately, never among the inputs
    for t in (t0, t1, emb):
        assert t.base is not None and t.base.name == t.name
        assert [plan.models[r.model].path for r in t.inputs] == [f["math"], f["code"]]
        assert all(r.model != base_idx for r in t.inputs)
    # gradient: t = 0 at layer 0 and outside layers, 1 at the last layer (2 layers)
    assert [p.weight for p in t0.model_params] == [0.0, 0.3]
    assert [p.weight for p in t1.model_params] == [1.0, 0.3]
    assert [p.weight for p in emb.model_params] == [0.0, 0.3]
    # filter list: first match wins
    assert [p.density for p in t0.model_params] == [0.5, 0.2]
    assert [p.density for p in t1.model_params] == [0.5, 0.9]
    assert t0.params.normalize is False and t0.params.lambda_ == 1.0
    assert plan.output.num_layers == 2
    assert plan.read_bytes == sum(c.nbytes for c in plan.models)
    assert plan.warnings == ()


def test_linear_uses_every_listed_model_and_keeps_dtype(tmp_path, llama_family):
    f = llama_family
    plan = _plan(tmp_path, f"""
merge_method: linear
base_model: {f['base']}
models: [{{model: {f['base']}}}, {{model: {f['math']}}}]
""")
    t = plan.tensors[0]
    assert t.base is None and len(t.inputs) == 2 and t.dtype == "F32"
    plan = _plan(tmp_path, f"""
merge_method: linear
models: [{{model: {f['base']}}}, {{model: {f['math']}}}]
out_dtype: bfloat16
""")
    assert {t.dtype for t in plan.tensors} == {"BF16"}
    assert plan.output.config["torch_dtype"] == "bfloat16"


def test_slices_renumber_layers_and_patch_config(tmp_path, llama4_family):
    f = llama4_family
    plan = _plan(tmp_path, f"""
merge_method: passthrough
slices:
  - sources: [{{model: {f['a']}, layer_range: [0, 2]}}]
  - sources: [{{model: {f['b']}, layer_range: [1, 4]}}]
""")
    assert plan.output.num_layers == 5
    assert plan.output.config["num_hidden_layers"] == 5
    by_name = {t.name: t for t in plan.tensors}
    src = {n: (plan.models[t.inputs[0].model].path.name, t.inputs[0].name)
           for n, t in by_name.items()}
    assert src["model.layers.1.mlp.up_proj.weight"] == ("a", "model.layers.1.mlp.up_proj.weight")
    assert src["model.layers.2.mlp.up_proj.weight"] == ("b", "model.layers.1.mlp.up_proj.weight")
    assert src["model.layers.4.input_layernorm.weight"] == ("b",
                                                           "model.layers.3.input_layernorm.weight")
    assert src["model.embed_tokens.weight"] == ("a", "model.embed_tokens.weight")
    assert not any(".layers.5." in n for n in by_name)


def test_slice_gradient_runs_over_the_slice(tmp_path, llama4_family):
    f = llama4_family
    plan = _plan(tmp_path, f"""
merge_method: linear
slices:
  - sources:
      - {{model: {f['a']}, layer_range: [0, 3]}}
      - {{model: {f['b']}, layer_range: [1, 4]}}
    parameters: {{weight: [0.0, 1.0]}}
""")
    w = [t.model_params[0].weight for t in plan.tensors if t.name.endswith("0.mlp.up_proj.weight")
         or t.name.endswith("1.mlp.up_proj.weight") or t.name.endswith("2.mlp.up_proj.weight")]
    assert w == [0.0, 0.5, 1.0]


def test_missing_model_is_located(tmp_path, llama_family):
    errs = _errors(tmp_path, f"""merge_method: linear
models:
  - model: {llama_family['math']}
  - model: {tmp_path / 'nope'}
""")
    assert len(errs) == 1
    assert errs[0].startswith("recipe.yaml:4: models[1].model: model ")
    assert "is not a local folder and not in the Hugging Face cache" in errs[0]


def test_missing_tensor_and_shape_mismatch(tmp_path, llama_family):
    broken = tmp_path / "broken"
    shutil.copytree(llama_family["math"], broken)
    state = load_file(broken / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    config = tiny_config("llama")
    config.intermediate_size = 96  # same width (hidden 32), wider MLP
    wide = make_model(tmp_path / "wide", config, 3, tokenizer=False)
    errs = _errors(tmp_path, f"""merge_method: linear
models:
  - model: {llama_family['code']}
  - model: {broken}
  - model: {wide}
""")
    assert any("models[1]: model" in e and "has no tensor 'model.layers.1.mlp.down_proj.weight'"
               in e for e in errs)
    assert any("tensor 'model.layers.0.mlp.up_proj.weight' has different shapes across models"
               in e and "[64, 32]" in e and "[96, 32]" in e for e in errs)


def test_layer_range_outside_model(tmp_path, llama_family):
    errs = _errors(tmp_path, f"""merge_method: passthrough
slices:
  - sources:
      - model: {llama_family['math']}
        layer_range: [1, 3]
""")
    assert errs == [f"recipe.yaml:5: slices[0].sources[0].layer_range: layer_range [1, 3) is "
                    f"outside model '{llama_family['math']}', which has 2 layers "
                    "(end is exclusive)"]


def test_parameter_errors_at_plan_time_are_located(tmp_path, llama_family):
    f = llama_family
    errs = _errors(tmp_path, f"""merge_method: ties
base_model: {f['base']}
models:
  - model: {f['math']}
    parameters:
      density: 1.5
parameters:
  normalize: 0.5
""")
    assert "recipe.yaml:6: models[0].parameters.density: Input should be less than or equal to 1" \
        in errs
    assert any(e.startswith("recipe.yaml:8: parameters.normalize:") for e in errs)


def test_method_needs_base_and_model_counts(tmp_path, llama_family):
    f = llama_family
    errs = _errors(tmp_path, f"merge_method: ties\nmodels: [{{model: {f['math']}}}]\n")
    assert errs == ["recipe.yaml:1: merge_method: merge method 'ties' needs a base_model"]
    errs = _errors(tmp_path, f"merge_method: passthrough\nmodels: [{{model: {f['math']}}}, "
                             f"{{model: {f['code']}}}]\n")
    assert errs == ["recipe.yaml:2: models: merge method 'passthrough' takes exactly 1 model(s), "
                    "got 2"]


def test_unused_parameter_warns(tmp_path, llama_family):
    f = llama_family
    plan = _plan(tmp_path, f"""merge_method: linear
models:
  - model: {f['math']}
    parameters: {{weight: 1, density: 0.5}}
""")
    assert plan.warnings == ("recipe.yaml:4: models[0].parameters.density: warning: merge method "
                             "'linear' does not use parameter 'density'; it has no effect",)


def test_tied_embeddings(tmp_path, llama_family, gpt2_family):
    # GPT-2 ties lm_head to wte: no lm_head in the output either
    plan = _plan(tmp_path, f"merge_method: linear\nmodels: [{{model: {gpt2_family['math']}}}, "
                           f"{{model: {gpt2_family['code']}}}]\n")
    assert not any("lm_head" in t.name for t in plan.tensors)
    # an untied base merged with a tied model: the tied model's lm_head is its embedding
    tied = make_model(tmp_path / "tied", tiny_config("llama", tie=True), 5, tokenizer=False)
    plan = _plan(tmp_path, f"merge_method: linear\nmodels: [{{model: {llama_family['math']}}}, "
                           f"{{model: {tied}}}]\n")
    head = next(t for t in plan.tensors if t.name == "lm_head.weight")
    assert [r.name for r in head.inputs] == ["lm_head.weight", "model.embed_tokens.weight"]


def test_non_float_tensors_are_copied(tmp_path, llama_family):
    model = tmp_path / "withint"
    shutil.copytree(llama_family["math"], model)
    import torch

    state = load_file(model / "model.safetensors")
    state["model.layers.0.mlp.counter"] = torch.arange(4)
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    plan = _plan(tmp_path, f"merge_method: linear\nmodels: [{{model: {model}}}, "
                           f"{{model: {model}}}]\n")
    t = next(t for t in plan.tensors if t.name == "model.layers.0.mlp.counter")
    assert t.method == COPY and t.dtype == "I64"


def test_hub_cache_resolution(tmp_path, llama_family, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-math"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(llama_family["math"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    plan = _plan(tmp_path, f"merge_method: linear\nmodels: [{{model: acme/tiny-math}}, "
                           f"{{model: {llama_family['code']}}}]\n")
    assert plan.models[0].path == repo / "snapshots" / commit
    errs = _errors(tmp_path, "merge_method: linear\nmodels: [{model: acme/absent}]\n")
    assert "not in the Hugging Face cache" in errs[0] and str(cache) in errs[0]


def test_dtypes_the_method_cannot_handle(tmp_path, llama_family):
    model = tmp_path / "fp8"
    shutil.copytree(llama_family["math"], model)
    import torch

    state = load_file(model / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    state[name] = state[name].to(torch.float8_e4m3fn)
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    errs = _errors(tmp_path, f"merge_method: linear\nmodels: [{{model: {model}}}, "
                             f"{{model: {model}}}]\n")
    assert errs == [f"recipe.yaml:2: models: tensor '{name}' is stored as F8_E4M3 (quantized), "
                    "which merge method 'linear' cannot merge; use a bf16/fp16/fp32 checkpoint"]
    errs = _errors(tmp_path, f"merge_method: linear\nmodels: [{{model: {model}}}, "
                             f"{{model: {llama_family['code']}}}]\n")
    assert len(errs) == 1 and "is fp16/bf16/fp32/fp64 in some models and not in others" in errs[0]
