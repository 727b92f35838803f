"""slerp: spherical interpolation from the base (t=0) to the other model (t=1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mergekit_like.methods import REGISTRY
from mergekit_like.methods.slerp import SlerpParams, slerp_merge
from mergekit_like.methods.spec import NoParams, TensorContext
from tests.conftest import load_tensors, write_recipe

CTX = TensorContext("w")


def ref_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The textbook formula on the unnormalised tensors, in float64 numpy."""
    x, y = a.double().numpy(), b.double().numpy()
    cos = float(np.sum(x * y) / (np.linalg.norm(x) * np.linalg.norm(y)))
    theta = np.arccos(cos)
    out = (np.sin((1 - t) * theta) * x + np.sin(t * theta) * y) / np.sin(theta)
    return torch.from_numpy(out).float()


def run(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return slerp_merge([other.clone()], base.clone(), [NoParams()], SlerpParams(t=t), CTX)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(4, 6), torch.randn(4, 6)


@pytest.mark.parametrize("t", [0.25, 0.5, 0.9])
def test_matches_formula(pair, t):
    base, other = pair
    torch.testing.assert_close(run(t, base, other), ref_slerp(t, base, other))


def test_endpoints_give_the_models(pair):
    base, other = pair
    torch.testing.assert_close(run(0.0, base, other), base, rtol=0, atol=1e-7)
    torch.testing.assert_close(run(1.0, base, other), other, rtol=1e-6, atol=1e-6)


def _at_angle(cos: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 3-vectors of norms 1 and 2 whose cosine is ``cos``."""
    sin = float(np.sqrt(1 - cos * cos))
    return torch.tensor([1.0, 0.0, 0.0]), 2.0 * torch.tensor([cos, sin, 0.0])


def test_nearly_colinear_falls_back_to_lerp():
    base, other = _at_angle(0.9996)  # |cos| > 0.9995
    t = 0.3
    lerp = (1 - t) * base + t * other
    got = run(t, base, other)
    torch.testing.assert_close(got, lerp, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got, ref_slerp(t, base, other), rtol=1e-6, atol=1e-7)


def test_just_below_threshold_is_spherical():
    base, other = _at_angle(0.9994)
    t = 0.3
    got = run(t, base, other)
    torch.testing.assert_close(got, ref_slerp(t, base, other), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got, (1 - t) * base + t * other, rtol=1e-6, atol=1e-7)


def test_opposite_tensors_are_interpolated_linearly(pair):
    base, _ = pair
    other = -2.0 * base
    torch.testing.assert_close(run(0.4, base, other), 0.6 * base + 0.4 * other)


def test_zero_tensor_is_not_normalised(pair):
    # a zero vector keeps cos = 0, so theta = pi/2: out = cos(t pi/2) base + sin(t pi/2) other
    _, other = pair
    base = torch.zeros(4, 6)
    t = 0.3
    torch.testing.assert_close(run(t, base, other), float(np.sin(t * np.pi / 2)) * other)


def test_parameters_and_registration():
    with pytest.raises(ValidationError):
        SlerpParams()  # t is required, as in mergekit
    with pytest.raises(ValidationError):
        SlerpParams(t=1.5)
    method = REGISTRY["slerp"]
    assert (method.base, method.min_models, method.max_models) == ("required", 1, 1)
    assert method.elementwise and method.stats is not None  # row chunks after a norms pass


def test_merge_through_cli(tmp_path, llama_family, run_cli):
    base, math = llama_family["base"], llama_family["math"]
    recipe = write_recipe(tmp_path, f"""
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {math}
parameters:
  t:
    - filter: self_attn
      value: [0.0, 1.0]
    - filter: mlp
      value: 0.7
    - value: 0.3
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b, out = load_tensors(base), load_tensors(math), load_tensors(tmp_path / "out")
    q0, q1 = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(out[q0], a[q0], rtol=0, atol=1e-7)
    torch.testing.assert_close(out[q1], b[q1], rtol=1e-6, atol=1e-6)
    up = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(out[up], ref_slerp(0.7, a[up], b[up]))
    # layer norms start at 1 and move by small noise: colinear, so linear interpolation
    ln = "model.layers.1.input_layernorm.weight"
    cos = torch.nn.functional.cosine_similarity(a[ln], b[ln], dim=0)
    assert cos > 0.9995
    torch.testing.assert_close(out[ln], 0.7 * a[ln] + 0.3 * b[ln])


def test_two_models_besides_the_base_are_refused(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, f"""
merge_method: slerp
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
  - model: {llama_family['code']}
parameters: {{t: 0.5}}
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert "exactly 1 model" in res.err
