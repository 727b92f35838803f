"""Checks that need no model: flawed recipes (modelled on published ones) are rejected offline,
with no model on the machine; the output names the checks that needed the models."""

from __future__ import annotations

import pytest

from mergekit_like.recipe.checks import MODEL_CHECKS
from tests.conftest import write_recipe

SLERP = """merge_method: slerp
base_model: OpenPipe/mistral-ft-optimized-1218
slices:
  - sources:
      - model: OpenPipe/mistral-ft-optimized-1218
        layer_range: [0, 32]
      - model: mlabonne/NeuralHermes-2.5-Mistral-7B
        layer_range: [0, 32]
parameters:
{t}
dtype: bfloat16
"""
SLERP_T = """  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5"""

DELLA = """merge_method: della
base_model: mistralai/Mistral-7B-v0.1
models:
  - model: mistralai/Mistral-7B-v0.1
  - model: WizardLMTeam/WizardMath-7B-V1.1
    parameters: {{weight: 0.5, density: {density}, epsilon: {epsilon}}}
  - model: teknium/OpenHermes-2.5-Mistral-7B
    parameters: {{weight: 0.5, density: 0.5, epsilon: 0.1}}
parameters: {{lambda: 1.0}}
dtype: bfloat16
"""


@pytest.fixture
def offline(monkeypatch):
    """No model anywhere: offline, and an empty hub cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _validate(tmp_path, run_cli, text):
    return run_cli("validate", write_recipe(tmp_path, text))


def test_published_recipe_passes_and_names_the_skipped_checks(tmp_path, run_cli, offline):
    res = _validate(tmp_path, run_cli, SLERP.format(t=SLERP_T))
    assert res.code == 0, res.err
    assert "recipe checks passed (slerp" in res.out
    assert "not checked, as 2 model(s) are not reachable: " + "; ".join(MODEL_CHECKS) in res.out
    assert "'OpenPipe/mistral-ft-optimized-1218' is not in the Hugging Face cache" in res.out
    assert "mlabonne/NeuralHermes-2.5-Mistral-7B" in res.out


def test_slerp_without_t(tmp_path, run_cli, offline):
    res = _validate(tmp_path, run_cli, SLERP.format(t="  {}"))
    assert res.code == 2
    assert res.err.strip() == "error: recipe.yaml:10: parameters.t: required parameter is missing"


def test_slerp_base_not_among_slice_sources(tmp_path, run_cli, offline):
    text = SLERP.format(t=SLERP_T).replace(
        "base_model: OpenPipe/mistral-ft-optimized-1218", "base_model: mistralai/Mistral-7B-v0.1"
    )
    res = _validate(tmp_path, run_cli, text)
    assert res.code == 2
    assert "slices[0].sources: base_model is not among this slice's sources" in res.err
    assert "takes exactly 1 model(s) besides the base, got 2" in res.err


@pytest.mark.parametrize("density,epsilon", [(0.9, 0.15), (0.1, 0.1), (0.5, 0.5)])
def test_della_density_epsilon_outside_unit(tmp_path, run_cli, offline, density, epsilon):
    res = _validate(tmp_path, run_cli, DELLA.format(density=density, epsilon=epsilon))
    assert res.code == 2
    assert res.err.startswith(
        "error: recipe.yaml:6: models[1].parameters.epsilon: density - "
        "epsilon and density + epsilon must lie strictly between 0 and 1"
    )
    assert len(res.err.strip().splitlines()) == 1
    ok = _validate(tmp_path, run_cli, DELLA.format(density=0.5, epsilon=0.2))
    assert ok.code == 0, ok.err


def test_task_arithmetic_given_slerps_t_and_no_weight(tmp_path, run_cli, offline):
    res = _validate(
        tmp_path,
        run_cli,
        """merge_method: task_arithmetic
base_model: meta-llama/Llama-2-7b-hf
models:
  - model: lmsys/vicuna-7b-v1.5
  - model: WizardLMTeam/WizardMath-7B-V1.0
parameters:
  t: 0.5
dtype: float16
""",
    )
    assert res.code == 2
    errors = [line for line in res.err.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: recipe.yaml:4: models[0].parameters.weight: required parameter is missing",
        "error: recipe.yaml:5: models[1].parameters.weight: required parameter is missing",
    ]
    assert (
        "parameters.t: warning: merge method 'task_arithmetic' does not use parameter 't'"
        in res.err
    )


def test_misspelled_parameter_is_an_error(tmp_path, run_cli, offline):
    res = _validate(
        tmp_path,
        run_cli,
        """merge_method: ties
base_model: mistralai/Mistral-7B-v0.1
models:
  - model: WizardLMTeam/WizardMath-7B-V1.1
    parameters: {weight: 0.5, desnity: 0.5}
""",
    )
    assert res.code == 2
    assert res.err.strip() == (
        "error: recipe.yaml:5: models[0].parameters.desnity: merge method "
        "'ties' has no parameter 'desnity'; did you mean 'density'?"
    )


def test_misspelled_parameter_stops_the_merge(tmp_path, run_cli, llama_family):
    recipe = write_recipe(
        tmp_path,
        f"""merge_method: ties
base_model: {llama_family["base"]}
models:
  - model: {llama_family["math"]}
    parameters: {{weight: 1.0, desnity: 0.5}}
""",
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2 and "did you mean 'density'?" in res.err
    assert not (tmp_path / "out").exists()


def test_model_listed_twice_and_model_counts(tmp_path, run_cli, offline):
    res = _validate(
        tmp_path,
        run_cli,
        """merge_method: nuslerp
models:
  - model: acme/a
    parameters: {weight: 0.5}
  - model: acme/b
    parameters: {weight: 0.5}
  - model: acme/a
    parameters: {weight: 0.5}
""",
    )
    assert res.code == 2
    assert (
        "recipe.yaml:7: models[2].model: warning: model 'acme/a' is listed twice (also at "
        "models[0].model)" in res.err
    )
    assert "merge method 'nuslerp' takes exactly 2 model(s), got 3" in res.err


def test_value_ranges_at_each_layer_of_a_slice(tmp_path, run_cli, offline):
    # t's gradient reaches 1.2 at the 3rd of 3 layers: outside [0, 1]
    text = SLERP.format(t="  t: [0.0, 1.2]").replace("[0, 32]", "[0, 3]")
    res = _validate(tmp_path, run_cli, text)
    assert res.code == 2 and "parameters.t: Input should be less than or equal to 1" in res.err


def test_unused_parameter_is_a_warning(tmp_path, run_cli, offline):
    res = _validate(
        tmp_path,
        run_cli,
        """merge_method: linear
models:
  - model: acme/a
    parameters: {weight: 0.5, density: 0.3}
  - model: acme/b
    parameters: {weight: 0.5}
""",
    )
    assert res.code == 0
    assert (
        "models[0].parameters.density: warning: merge method 'linear' does not use "
        "parameter 'density'" in res.err
    )
