"""karcher: equal-weight Riemannian mean of the directions, scaled by the mean norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mergekit_like.methods import REGISTRY
from mergekit_like.methods.karcher import KarcherParams, karcher_merge
from mergekit_like.methods.spec import NoParams, TensorContext
from tests.conftest import load_tensors, write_recipe

CTX = TensorContext("w")


def ref_karcher(xs, max_iter=10, tol=1e-5) -> torch.Tensor:
    """Fixed-point iteration u <- exp_u(mean_i log_u(u_i)) on the unit sphere, float64."""
    shape = xs[0].shape
    v = [x.double().numpy().ravel() for x in xs]
    norms = np.array([np.linalg.norm(a) for a in v])
    dirs = np.stack([a / n for a, n in zip(v, norms, strict=True) if n > tol])
    u = dirs.mean(axis=0)
    u /= np.linalg.norm(u)
    for _ in range(max_iter):
        cos = np.clip(dirs @ u, -1, 1)
        theta = np.arccos(cos)
        logs = [(th / np.sin(th)) * (d - c * u) if th >= tol else 0 * u
                for d, c, th in zip(dirs, cos, theta, strict=True)]
        step = np.mean(logs, axis=0)
        r = np.linalg.norm(step)
        if r < tol:
            break
        u = np.cos(r) * u + np.sin(r) * step / r
        u /= np.linalg.norm(u)
    return torch.from_numpy((norms.mean() * u).reshape(shape)).float()


def run(xs, base=None, **params) -> torch.Tensor:
    return karcher_merge([x.clone() for x in xs], None if base is None else base.clone(),
                         [NoParams()] * len(xs), KarcherParams(**params), CTX)


@pytest.fixture
def three() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(4, 6) for _ in range(3)]


def test_matches_fixed_point_iteration(three):
    torch.testing.assert_close(run(three), ref_karcher(three))


def test_converged_mean_has_zero_mean_log(three):
    # the defining property of the Karcher mean: the log maps of the points sum to zero
    out = run(three, max_iter=100, tol=1e-9).double().numpy().ravel()
    u = out / np.linalg.norm(out)
    total = np.zeros_like(u)
    for x in three:
        d = x.double().numpy().ravel()
        d /= np.linalg.norm(d)
        theta = np.arccos(np.clip(d @ u, -1, 1))
        total += theta / np.sin(theta) * (d - np.cos(theta) * u)
    assert np.linalg.norm(total) < 1e-5
    norms = [x.norm().item() for x in three]
    assert np.linalg.norm(out) == pytest.approx(np.mean(norms), rel=1e-6)


def test_two_models_give_the_geodesic_midpoint(three):
    x, y, _ = three
    a, b = x / x.norm(), y / y.norm()
    mid = (a + b) / (a + b).norm() * (x.norm() + y.norm()) / 2
    torch.testing.assert_close(run([x, y]), mid)


def test_zero_tensor_lowers_the_norm_but_not_the_direction(three):
    x = three[0]
    torch.testing.assert_close(run([x, torch.zeros(4, 6)]), x / 2)
    torch.testing.assert_close(run([torch.zeros(4, 6), torch.zeros(4, 6)]), torch.zeros(4, 6))


def test_no_iterations_give_the_normalised_mean(three):
    units = [x / x.norm() for x in three]
    mean = sum(units) / 3
    expected = mean / mean.norm() * sum(x.norm() for x in three) / 3
    torch.testing.assert_close(run(three, max_iter=0), expected)


def test_single_model_is_returned_unchanged(three):
    torch.testing.assert_close(run(three[:1]), three[0], rtol=0, atol=0)


def test_base_model_is_one_more_input(three):
    # mergekit adds base_model to the inputs, so the base takes part in the mean
    x, y, base = three
    torch.testing.assert_close(run([x, y], base), ref_karcher([base, x, y]))


def test_parameters_and_registration():
    p = KarcherParams()
    assert (p.max_iter, p.tol) == (10, 1e-5)
    assert KarcherParams.model_validate({"max_iter": 20.0}).max_iter == 20
    with pytest.raises(ValidationError):
        KarcherParams.model_validate({"max_iter": 2.5})
    method = REGISTRY["karcher"]
    assert (method.base, method.min_models, method.max_models) == ("optional", 1, None)
    assert not method.elementwise  # merged whole: mergekit reduces whole tensors


def test_merge_through_cli(tmp_path, llama_family, run_cli):
    f = llama_family
    recipe = write_recipe(tmp_path, f"""
merge_method: karcher
models:
  - model: {f['math']}
  - model: {f['code']}
  - model: {f['chat']}
parameters:
  max_iter: 20
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    name = "model.layers.0.mlp.gate_proj.weight"
    xs = [load_tensors(f[k])[name] for k in ("math", "code", "chat")]
    torch.testing.assert_close(out[name], ref_karcher(xs, max_iter=20))


def mergekit_order_karcher(xs, max_iter=10, tol=1e-5) -> torch.Tensor:
    """mergekit 0.1.5's karcher written out in its torch calls and order (float32 inputs,
    every norm above tol): equal weights, float32 norms, iterates normalised each step."""
    n = len(xs)
    norms = [torch.linalg.vector_norm(x) for x in xs]
    units = [x / nx for x, nx in zip(xs, norms, strict=True)]
    a = (1.0 / n) / sum(1.0 / n for _ in xs)
    mean = torch.zeros_like(units[0])
    for u in units:
        mean += a * u
    mean = mean / torch.linalg.vector_norm(mean)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for u in units:
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        tn = torch.linalg.vector_norm(tangent)
        if tn.item() < tol:
            break
        mean = torch.cos(tn) * mean + torch.sin(tn) * (tangent / tn)
        mean = mean / torch.linalg.vector_norm(mean)
    return sum((1.0 / n) * nx for nx in norms) * mean


@pytest.mark.parametrize("with_base", [False, True])
def test_bytes_are_mergekits(with_base):
    g = torch.Generator().manual_seed(12)
    base = torch.randn(250, 120, generator=g)
    xs = [base + 0.5 * torch.randn(250, 120, generator=g) for _ in range(3)]
    b = base if with_base else None
    want = mergekit_order_karcher(([base] if with_base else []) + xs)
    got = karcher_merge([x.clone() for x in xs], None if b is None else b.clone(),
                        [NoParams()] * 3, KarcherParams(), CTX)
    assert torch.equal(got, want)
