"""NaN or Inf: in an ingredient (an error unless --allow-nonfinite) or made by the merge."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import load_tensors, write_recipe

NAME = "model.layers.1.mlp.up_proj.weight"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_nan_in_an_ingredient(tmp_path, llama_family, run_cli, device):
    model = tmp_path / "nan"
    shutil.copytree(llama_family["math"], model)
    state = load_file(model / "model.safetensors")
    state[NAME][0, 3] = float("nan")
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    recipe = write_recipe(tmp_path, f"merge_method: linear\nmodels: [{{model: {model}}}, "
                                    f"{{model: {llama_family['code']}}}]\n")
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--device", device)
    assert res.code == 2
    assert res.err.strip() == (f"error: model '{model}': tensor '{NAME}' holds NaN or Inf; "
                               "pass --allow-nonfinite to merge it anyway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan", "recipe.yaml"]
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--allow-nonfinite", "--device", device)
    assert res.code == 0, res.err
    assert torch.isnan(load_tensors(tmp_path / "out")[NAME][0, 3])


@pytest.mark.parametrize("device", DEVICES)
def test_inf_made_by_the_merge(tmp_path, llama_family, run_cli, device):
    recipe = write_recipe(tmp_path, f"""merge_method: task_arithmetic
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
    parameters: {{weight: 1e38}}
out_dtype: float16
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--device", device)
    assert res.code == 2
    assert "merge method 'task_arithmetic' produced NaN or Inf" in res.err
    assert len(res.err.strip().splitlines()) == 1
