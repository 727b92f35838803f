"""nearswap: move the base toward the other model by clamp(t / |base - other|, 0, 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mergekit_like.methods import REGISTRY
from mergekit_like.methods.nearswap import NearSwapParams, nearswap_merge
from mergekit_like.methods.spec import NoParams, TensorContext
from tests.conftest import load_tensors, write_recipe

CTX = TensorContext("w")


def ref_nearswap(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    a, b = base.double().numpy(), other.double().numpy()
    w = np.clip(t / np.maximum(np.abs(a - b), 1e-6), 0.0, 1.0)
    return torch.from_numpy(w * b + (1 - w) * a).float()


def run(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return nearswap_merge([other.clone()], base.clone(), [NoParams()], NearSwapParams(t=t), CTX)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(4, 6), torch.randn(4, 6)


def test_hand_computed_values():
    base = torch.tensor([0.0, 0.0, 0.0, 1.0])
    other = torch.tensor([0.05, 0.1, 0.4, -1.0])
    # |diff| <= t: take other; beyond: move by t (weight t / |diff|)
    expected = torch.tensor([0.05, 0.1, 0.1, 0.9])
    torch.testing.assert_close(run(0.1, base, other), expected)


@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_matches_formula(pair, t):
    base, other = pair
    torch.testing.assert_close(run(t, base, other), ref_nearswap(t, base, other))


def test_t_zero_gives_the_base_and_large_t_the_other(pair):
    base, other = pair
    torch.testing.assert_close(run(0.0, base, other), base, rtol=0, atol=0)
    torch.testing.assert_close(run(100.0, base, other), other, rtol=0, atol=0)


def test_equal_elements_stay_finite(pair):
    base, other = pair
    other[0] = base[0]
    got = run(0.5, base, other)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[0], base[0])


def test_row_chunks_give_the_same_result(pair):
    # elementwise: the executor may merge large tensors in row ranges
    base, other = pair
    whole = run(0.3, base, other)
    parts = torch.cat([run(0.3, base[:2], other[:2]), run(0.3, base[2:], other[2:])])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)


def test_parameters_and_registration():
    with pytest.raises(ValidationError):
        NearSwapParams()  # t is required, as in mergekit
    with pytest.raises(ValidationError):
        NearSwapParams(t=-0.1)
    method = REGISTRY["nearswap"]
    assert (method.base, method.min_models, method.max_models) == ("required", 1, 1)
    assert method.elementwise


def test_merge_through_cli(tmp_path, llama_family, run_cli):
    base, chat = llama_family["base"], llama_family["chat"]
    recipe = write_recipe(tmp_path, f"""
merge_method: nearswap
base_model: {base}
models:
  - model: {chat}
parameters:
  t: [0.005, 0.02]
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b, out = load_tensors(base), load_tensors(chat), load_tensors(tmp_path / "out")
    name = "model.layers.1.self_attn.o_proj.weight"  # last layer: t = 0.02
    torch.testing.assert_close(out[name], ref_nearswap(0.02, a[name], b[name]))
    frac = ((a[name] - b[name]).abs() <= 0.02).float().mean()
    assert 0.1 < frac < 0.9  # both regimes (swapped, and moved part way) are exercised


def test_negative_t_is_a_located_error(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, f"""
merge_method: nearswap
base_model: {llama_family['base']}
models:
  - model: {llama_family['chat']}
parameters:
  t: -1
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert "parameters.t" in res.err
