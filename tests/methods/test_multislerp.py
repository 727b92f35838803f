"""multislerp: weighted barycentre on the hypersphere, optionally of task vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergekit_like.methods import REGISTRY
from mergekit_like.methods.multislerp import (
    MultiSlerpModelParams,
    MultiSlerpParams,
    multislerp_merge,
)
from mergekit_like.methods.spec import TensorContext
from tests.conftest import load_tensors, write_recipe

CTX = TensorContext("w")


def ref_multislerp(xs, weights, base=None, normalize=True, eps=1e-8) -> torch.Tensor:
    """Tangent-space barycentre at the normalised weighted mean of the unit vectors (float64)."""
    shape = xs[0].shape
    v = np.stack([x.double().numpy().ravel() for x in xs])
    if base is not None:
        v = v - base.double().numpy().ravel()
    w = np.asarray(weights, dtype=np.float64)
    if normalize:
        w = w / w.sum()
    norms = np.linalg.norm(v, axis=1)
    u = v / (norms[:, None] + eps)
    m = w @ u
    m = m / np.linalg.norm(m)
    tangent = w @ (u - np.outer(u @ m, m))
    r = np.linalg.norm(tangent) + eps
    out = (np.cos(r) * m + np.sin(r) / r * tangent) * (w @ norms)
    if base is not None:
        out = out + base.double().numpy().ravel()
    return torch.from_numpy(out.reshape(shape)).float()


def run(xs, weights, base=None, **params) -> torch.Tensor:
    return multislerp_merge(
        [x.clone() for x in xs],
        None if base is None else base.clone(),
        [MultiSlerpModelParams(weight=w) for w in weights],
        MultiSlerpParams(**params),
        CTX,
    )


@pytest.fixture
def four() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(4, 6) for _ in range(4)]


def test_weighted_barycentre(four):
    xs = four[:3]
    torch.testing.assert_close(run(xs, [1.0, 2.0, 0.5]), ref_multislerp(xs, [1.0, 2.0, 0.5]))


def test_two_equal_weights_give_the_slerp_midpoint(four):
    x, y = four[0], four[1] * (four[0].norm() / four[1].norm())  # equal norms
    a, b = x.double().numpy().ravel(), y.double().numpy().ravel()
    theta = np.arccos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    mid = (np.sin(theta / 2) * (a + b) / np.sin(theta)).reshape(4, 6)
    torch.testing.assert_close(run([x, y], [1.0, 1.0]), torch.from_numpy(mid).float())


def test_weights_unnormalised(four):
    xs = four[:2]
    got = run(xs, [0.5, 0.25], normalize_weights=False)
    torch.testing.assert_close(got, ref_multislerp(xs, [0.5, 0.25], normalize=False))
    assert not torch.allclose(got, run(xs, [0.5, 0.25]))


def test_base_model_gives_task_vector_space(four):
    *xs, base = four
    torch.testing.assert_close(run(xs, [1.0, 1.0, 1.0], base),
                               ref_multislerp(xs, [1.0, 1.0, 1.0], base))


def test_model_with_weight_zero_has_no_influence(four):
    x, y, z, _ = four
    torch.testing.assert_close(run([x, y, z], [1.0, 0.0, 2.0]), run([x, z], [1.0, 2.0]))
    torch.testing.assert_close(run([x, y], [1.0, 0.0]), x)


def test_single_model_is_returned_unchanged(four):
    x, _, _, base = four
    torch.testing.assert_close(run([x], [0.3], base), x, rtol=0, atol=0)


def test_opposite_pair_falls_back_to_linear(four):
    x, _, _, base = (torch.round(t * 4) / 4 for t in four)  # exact sums and differences
    got = run([base + x, base - x], [1.0, 1.0], base)  # task vectors x and -x cancel
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, base)


def test_cancelling_directions_of_three_models_fail(four):
    x, y, _, _ = four
    with pytest.raises(ValueError, match="cancel"):
        run([x, -x, y], [1.0, 1.0, 0.0])


def test_weights_summing_to_zero_fail(four):
    with pytest.raises(ValueError, match="sum to zero"):
        run(four[:2], [1.0, -1.0])


def test_parameters_and_registration():
    p = MultiSlerpParams()
    assert (p.normalize_weights, p.eps) == (True, 1e-8)
    assert MultiSlerpModelParams().weight == 1.0
    method = REGISTRY["multislerp"]
    assert (method.base, method.min_models, method.max_models) == ("optional", 1, None)
    assert not method.elementwise  # merged whole: mergekit reduces whole tensors


def test_merge_through_cli(tmp_path, llama_family, run_cli):
    f = llama_family
    recipe = write_recipe(tmp_path, f"""
merge_method: multislerp
base_model: {f['base']}
models:
  - model: {f['math']}
    parameters: {{weight: 1.0}}
  - model: {f['code']}
    parameters: {{weight: 0.5}}
  - model: {f['chat']}
    parameters: {{weight: [0.0, 2.0]}}
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    ts = {k: load_tensors(f[k]) for k in ("base", "math", "code", "chat")}
    out = load_tensors(tmp_path / "out")
    name = "model.layers.1.self_attn.v_proj.weight"  # last layer: chat's weight is 2.0
    xs = [ts[k][name] for k in ("math", "code", "chat")]
    torch.testing.assert_close(out[name], ref_multislerp(xs, [1.0, 0.5, 2.0], ts["base"][name]))


def mergekit_order_multislerp(xs, weights, base=None, eps=1e-8) -> torch.Tensor:
    """mergekit 0.1.5's multislerp written out in its torch calls and order, in the tensors'
    dtype (normalised weights)."""
    v = torch.stack(xs, dim=0)
    if base is not None:
        v -= base
    flat = v.view(v.shape[0], -1)
    w = torch.tensor(weights, dtype=v.dtype)
    w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    u = flat / (norms + eps)
    m = (u * w.view(-1, 1)).sum(0)
    m = m / torch.norm(m)
    tangents = u - (u * m).sum(-1, keepdim=True) * m
    tangent = (tangents * w.view(-1, 1)).sum(0)
    r = torch.norm(tangent) + eps
    out = m * torch.cos(r) + tangent * (torch.sin(r) / r)
    out = (out * (norms.squeeze(-1) * w).sum()).view(v.shape[1:])
    return out if base is None else out + base


@pytest.mark.parametrize("with_base", [False, True])
def test_bytes_are_mergekits(with_base):
    g = torch.Generator().manual_seed(11)
    base = torch.randn(250, 120, generator=g)
    xs = [base + 0.4 * torch.randn(250, 120, generator=g) for _ in range(3)]
    b = base if with_base else None
    weights = [0.5, 0.3, 0.2]
    mps = [MultiSlerpModelParams(weight=w) for w in weights]
    want = mergekit_order_multislerp(xs, weights, b)
    got = multislerp_merge([x.clone() for x in xs], None if b is None else b.clone(), mps,
                           MultiSlerpParams(), CTX)
    assert torch.equal(got, want)
