"""Bad mergekit-moe configs and unsupported models: one line naming the field, exit 2,
nothing written."""

from __future__ import annotations

import pytest

from mergekit_like.moe.command import ALL_SAME_FLAG
from tests.conftest import write_recipe
from tests.moe.conftest import make_dense, moe_yaml


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return make_dense(tmp_path_factory.mktemp("moe-gpt2"), "gpt2", names=("math",))


def _one_line(res, tmp_path):
    assert res.code == 2, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.partial").exists()
    return lines[0]


def _expert1(models, path):
    """The config with experts[1].source_model pointing at ``path``."""
    return moe_yaml(models).replace(f"source_model: {models['code']}", f"source_model: {path}")


@pytest.mark.parametrize("command", [("moe",), ()])
def test_unsupported_architecture_names_the_expert(dense, gpt2, tmp_path, run_cli, command):
    cfg = write_recipe(tmp_path, _expert1(dense("llama"), gpt2["math"]))
    line = _one_line(run_cli(*command, cfg, tmp_path / "out"), tmp_path)
    assert line.startswith(
        "error: recipe.yaml:6: experts[1].source_model: a gpt2 model; a "
        "mixture of experts is built from llama, mistral, qwen2, qwen3 "
        "models"
    ), line


def test_mixed_architectures_name_the_odd_one(dense, tmp_path, run_cli):
    cfg = write_recipe(tmp_path, _expert1(dense("llama"), dense("qwen3")["code"]))
    line = _one_line(run_cli("moe", cfg, tmp_path / "out"), tmp_path)
    assert "experts[1].source_model: a qwen3 model, but base_model is llama" in line, line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "architecture: deepseek\n",
            "architecture: mergekit builds these models as DeepSeek "
            "MoE, which this tool does not build",
        ),
        ("architecture: gptoss\n", "architecture: unknown output architecture 'gptoss'"),
        (
            "architecture: qwen3_moe\n",
            "architecture: no output architecture takes this config "
            "(Qwen3-MoE: it takes qwen3 models, not llama)",
        ),
        ("experts_per_token: 3\n", "experts_per_token: 3 experts per token, but only 2 experts"),
        ("gate_mode: magic\n", "gate_mode: Input should be 'hidden'"),
        ("dtype: int4\n", "dtype: unknown dtype 'int4'"),
        (
            "shared_experts: []\narchitecture: qwen\n",
            "no output architecture takes this config (Qwen2-MoE: it takes exactly one shared "
            "expert; Qwen3-MoE: it takes qwen3 models, not llama)",
        ),
    ],
)
def test_bad_fields_are_one_line(dense, tmp_path, run_cli, extra, expected):
    text = moe_yaml(dense("llama")).replace("gate_mode: hidden\n", "") + extra
    line = _one_line(run_cli("moe", write_recipe(tmp_path, text), tmp_path / "out"), tmp_path)
    assert expected in line, line


def test_missing_and_unknown_expert_fields(dense, tmp_path, run_cli):
    models = dense("llama")
    text = moe_yaml(models).replace(f"  - source_model: {models['code']}\n", "  - ")
    line = _one_line(run_cli("moe", write_recipe(tmp_path, text), tmp_path / "out"), tmp_path)
    assert line == "error: recipe.yaml:6: experts[1].source_model: required field is missing"
    text = moe_yaml(models).replace("positive_prompts", "positve_prompts", 1)
    line = _one_line(run_cli("moe", write_recipe(tmp_path, text), tmp_path / "out"), tmp_path)
    assert "experts[0].positve_prompts: unknown key" in line, line


def test_prompts_are_required_and_must_differ(dense, tmp_path, run_cli):
    models = dense("llama")
    text = moe_yaml(models).replace('    positive_prompts: ["w40 w41 w42 w43"]\n', "")
    line = _one_line(run_cli("moe", write_recipe(tmp_path, text), tmp_path / "out"), tmp_path)
    assert "experts[1].positive_prompts: required with gate_mode hidden" in line, line
    text = moe_yaml(models).replace("w40 w41 w42 w43", "w1 w2 w3 w4 w5")
    line = _one_line(run_cli("moe", write_recipe(tmp_path, text), tmp_path / "out"), tmp_path)
    assert "experts: every expert has the same prompts" in line, line
    text = moe_yaml(models).replace(str(models["code"]), str(models["math"]))
    cfg = write_recipe(tmp_path, text)
    line = _one_line(run_cli("moe", cfg, tmp_path / "out"), tmp_path)
    assert "--i-understand-this-is-not-useful-without-training" in line, line
    res = run_cli("moe", cfg, tmp_path / "out", ALL_SAME_FLAG)
    assert res.code == 0, res.err


def test_expert_of_another_size_is_refused_before_writing(dense, tmp_path, run_cli):
    from mergekit_like.demo import make_model
    from tests.moe.conftest import dense_config

    cfg = dense_config("llama")
    cfg.intermediate_size = 96
    wide = make_model(tmp_path / "wide", cfg, 5)
    text = _expert1(dense("llama"), wide)
    line = _one_line(run_cli("moe", write_recipe(tmp_path, text), tmp_path / "out"), tmp_path)
    assert (
        "experts[1].source_model: model.layers.0.mlp.gate_proj.weight has shape [96, 32], "
        "the Mixtral output needs [64, 32]" in line
    ), line


def test_output_inside_an_input_is_refused(dense, tmp_path, run_cli):
    models = dense("llama")
    cfg = write_recipe(tmp_path, moe_yaml(models))
    res = run_cli("moe", cfg, models["math"] / "sub", "--force")
    assert res.code == 2 and "experts[0].source_model" in res.err and "would overwrite" in res.err
    assert not (models["math"] / "sub").exists()


def test_a_failed_write_leaves_nothing(dense, tmp_path, run_cli, monkeypatch):
    from mergekit_like.io.writer import ShardWriter

    calls = []

    def broken(self, name, tensor, offset=0):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "write", broken)
    cfg = write_recipe(tmp_path, moe_yaml(dense("llama")))
    with pytest.raises(OSError):
        run_cli("moe", cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
