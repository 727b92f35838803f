"""The core path end to end on the shared fixtures (detailed tests live beside their modules)."""

from __future__ import annotations

import torch

from tests.conftest import load_tensors, write_recipe


def test_linear_merge_matches_formula(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, f"""
merge_method: linear
models:
  - model: {llama_family['math']}
    parameters: {{weight: 0.25}}
  - model: {llama_family['code']}
    parameters: {{weight: 0.75}}
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b = load_tensors(llama_family["math"]), load_tensors(llama_family["code"])
    out = load_tensors(tmp_path / "out")
    assert set(out) == set(a)
    for name, t in out.items():
        torch.testing.assert_close(t, 0.25 * a[name] + 0.75 * b[name])
