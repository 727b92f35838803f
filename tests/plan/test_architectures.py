"""Ingredients of different architectures are refused (mergekit's rule), unless
--allow-crimes; ingredients of different widths get one error naming the widths."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mergekit_like.demo import make_model, tiny_config
from tests.conftest import load_tensors, write_recipe


@pytest.fixture(scope="module")
def qwen_lookalike(tmp_path_factory, llama_family):
    """llama_family's 'code' with a config that says Qwen2: the same tensor shapes."""
    folder = tmp_path_factory.mktemp("crimes") / "qwen"
    shutil.copytree(llama_family["code"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _linear(tmp_path, a, b):
    return write_recipe(
        tmp_path,
        f"""
merge_method: linear
models:
  - model: {a}
  - model: {b}
dtype: float32
""",
    )


def test_different_architectures_are_refused(tmp_path, llama_family, qwen_lookalike, run_cli):
    recipe = _linear(tmp_path, llama_family["math"], qwen_lookalike)
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "recipe.yaml:5: models[1].model: architectures differ" in lines[0]
    assert "LlamaForCausalLM (llama)" in lines[0] and "Qwen2ForCausalLM (qwen2)" in lines[0]
    assert "--allow-crimes" in lines[0]
    assert not (tmp_path / "out").exists()
    assert run_cli("plan", recipe, "--summary").code == 2


def test_allow_crimes_merges_them(tmp_path, llama_family, qwen_lookalike, run_cli):
    recipe = _linear(tmp_path, llama_family["math"], qwen_lookalike)
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--allow-crimes")
    assert res.code == 0, res.err
    got = load_tensors(tmp_path / "out")
    a, b = load_tensors(llama_family["math"]), load_tensors(qwen_lookalike)
    assert set(got) == set(a)
    for name, t in got.items():
        torch.testing.assert_close(t, (a[name] + b[name]) / 2, rtol=0, atol=0)
    assert run_cli("plan", recipe, "--summary", "--allow-crimes").code == 0


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A llama of hidden size 64 (llama_family's are 32)."""
    return make_model(tmp_path_factory.mktemp("wide") / "wide", tiny_config("llama", hidden=64), 5)


def test_different_hidden_sizes_give_one_error(tmp_path, llama_family, wide, run_cli):
    recipe = _linear(tmp_path, llama_family["math"], wide)
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--allow-crimes")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "models[1].model: hidden sizes differ" in lines[0]
    assert f"{str(llama_family['math'])!r}: 32" in lines[0] and f"{str(wide)!r}: 64" in lines[0]
    assert "vocabular" not in lines[0]
