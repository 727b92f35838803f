"""arcee_fusion: the other model's change where its KL-weighted importance reaches
Q2 + 1.5 IQR, checked against the formula written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergekit_like.methods import REGISTRY
from mergekit_like.methods.arcee_fusion import arcee_fusion_merge
from mergekit_like.methods.spec import NoParams, TensorContext
from tests.conftest import load_tensors, write_recipe


def ref_mask(base: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """Which entries take x's value, in float64."""
    b, y = base.double().numpy(), x.double().numpy()

    def softmax(v):
        e = np.exp(v - v.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p, q = softmax(y) + 1e-8, softmax(b) + 1e-8
    imp = np.abs(y - b) * (p * np.log(p / q)).sum(axis=-1, keepdims=True)
    s = np.sort(imp.reshape(-1))
    q1, q2, q3 = (s[int(np.float32(f) * np.float32(s.size - 1))] for f in (0.25, 0.5, 0.75))
    return imp >= q2 + 1.5 * (q3 - q1)


def _fusion(base, x):
    return arcee_fusion_merge(
        [x.clone()], base.clone(), [NoParams()], NoParams(), TensorContext("w")
    )


def test_only_outlying_changes_are_taken():
    # seven rows change by j * 1e-3 at column j (importance j * u, u tiny: their KL is
    # small); row 2 changes two entries a lot. Sorted, the 48 importances are 4 zeros,
    # 7 copies of each j * u and two large values: Q1 = 2u, Q2 = 3u, Q3 = 5u, so the
    # threshold is 7.5u, above every small change and below the two large ones.
    base = torch.zeros(8, 6)
    x = torch.arange(1, 7).float().expand(8, 6) * 1e-3
    x[2] = torch.tensor([3.0, 0.0, 0.0, 2.5, 0.0, 0.0])
    expected = base.clone()
    expected[2, 0], expected[2, 3] = 3.0, 2.5
    torch.testing.assert_close(_fusion(base, x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(16, 24), (64,), (4, 5, 6)])
def test_matches_formula(shape):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(shape, generator=g)
    x = base + torch.randn(shape, generator=g) * 0.1
    mask = ref_mask(base, x)
    assert 0 < mask.sum() < mask.size  # the threshold splits the entries
    expected = base + (x - base) * torch.from_numpy(mask).float()
    torch.testing.assert_close(_fusion(base, x), expected, rtol=0, atol=0)


def test_registration():
    method = REGISTRY["arcee_fusion"]
    assert (method.base, method.min_models, method.max_models) == ("required", 1, 1)
    assert not method.elementwise  # rows' softmax and the tensor's quartiles: merged whole


def test_merge_through_cli(tmp_path, llama_family, run_cli):
    base, chat = llama_family["base"], llama_family["chat"]
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: arcee_fusion
base_model: {base}
models:
  - model: {chat}
dtype: float32
""",
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b, out = load_tensors(base), load_tensors(chat), load_tensors(tmp_path / "out")
    for name in ("model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        mask = torch.from_numpy(ref_mask(a[name], b[name])).float()
        assert 0 < mask.sum() < mask.numel()
        torch.testing.assert_close(out[name], a[name] + (b[name] - a[name]) * mask, rtol=0, atol=0)
