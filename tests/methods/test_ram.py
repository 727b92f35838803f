"""ram and ramplus_tl: unique changes kept, shared changes averaged (RAM+ scales the unique
ones by the tensor's overlap), checked against the formulas written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergekit_like.methods import REGISTRY
from mergekit_like.methods.ram import RamParams, RamPlusParams, ram_merge, ramplus_tl_merge
from mergekit_like.methods.spec import NoParams, TensorContext
from tests.conftest import load_tensors, write_recipe

CTX = TensorContext("w")


def ref_ram(base, xs, eps=1e-5, r=None, alpha=None):
    """RAM per entry in float64; with r and alpha, RAM+ (tensor-local)."""
    b = base.double().numpy().reshape(-1)
    tv = np.stack([x.double().numpy().reshape(-1) - b for x in xs])
    # the threshold is applied to the float32 task vectors, as the method computes them
    contrib = np.stack([(x - base).abs().numpy().reshape(-1) > eps for x in xs])
    c = contrib.sum(axis=0)
    lam = np.ones(len(xs))
    if r is not None:
        shared = (contrib & (c > 1)).sum(axis=1)
        unique = (contrib & (c == 1)).sum(axis=1)
        lam = 1 + r * np.clip(shared / np.maximum(unique, eps), 0, alpha)
    out = b.copy()
    for i in range(len(xs)):
        kept = tv[i] * contrib[i]
        out += kept * (c == 1) * lam[i] + kept * (c > 1) / np.maximum(c, 1)
    return torch.from_numpy(out.reshape(base.shape)).float()


def _ram(base, xs, **kw):
    return ram_merge(
        [x.clone() for x in xs], base.clone(), [NoParams()] * len(xs), RamParams(**kw), CTX
    )


def _plus(base, xs, ctx=CTX, **kw):
    return ramplus_tl_merge(
        [x.clone() for x in xs], base.clone(), [NoParams()] * len(xs), RamPlusParams(**kw), ctx
    )


@pytest.fixture
def models():
    """A base and three sparse fine-tunes: entries changed by none, one, or several."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 10, generator=g)
    xs = []
    for _ in range(3):
        d = torch.randn(12, 10, generator=g) * 0.01
        d[torch.rand(12, 10, generator=g) < 0.6] = 0
        xs.append(base + d)
    return base, xs


def test_hand_computed_values():
    base = torch.zeros(4)
    a = torch.tensor([1.0, 2.0, 0.0, 0.0])
    b = torch.tensor([0.0, 4.0, 0.0, 1e-6])  # 1e-6 is below epsilon: not a change
    # entry 0: only a changes it (kept whole); entry 1: both (mean 3); entry 3: none
    torch.testing.assert_close(_ram(base, [a, b]), torch.tensor([1.0, 3.0, 0.0, 0.0]))
    # RAM+: a changes 1 shared and 1 unique entry (rho = 1, clamped to alpha = 0.2),
    # b changes 1 shared and no unique one (rho = 1 / epsilon, clamped too)
    lam_a = 1 + 0.1 * 0.2
    torch.testing.assert_close(_plus(base, [a, b]), torch.tensor([lam_a, 3.0, 0.0, 0.0]))


@pytest.mark.parametrize("eps", [1e-5, 5e-3])
def test_ram_matches_formula(models, eps):
    base, xs = models
    torch.testing.assert_close(_ram(base, xs, epsilon=eps), ref_ram(base, xs, eps))


@pytest.mark.parametrize(("r", "alpha"), [(0.1, 0.2), (0.5, 1.0), (2.0, 10.0)])
def test_ramplus_matches_formula(models, r, alpha):
    base, xs = models
    got = _plus(base, xs, r=r, alpha=alpha)
    torch.testing.assert_close(got, ref_ram(base, xs, 1e-5, r, alpha))
    assert not torch.equal(got, _ram(base, xs))  # the overlap scaling is exercised


def test_one_model_adds_its_changes_above_epsilon(models):
    base, xs = models
    d = xs[0] - base
    expected = base + d * (d.abs() > 1e-5)
    torch.testing.assert_close(_ram(base, xs[:1]), expected, rtol=0, atol=0)


def test_row_chunks_give_the_same_bytes(models):
    base, xs = models
    whole = _ram(base, xs)
    rows = (slice(0, 5), slice(5, 12))
    parts = torch.cat([_ram(base[s], [x[s] for x in xs]) for s in rows])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    method, params = REGISTRY["ramplus_tl"], RamPlusParams(r=0.5, alpha=1.0)
    stats = method.stats(tuple(base.shape), 32, [NoParams()] * 3, params, CTX)
    for s in rows:
        stats.observe(0, [x[s] for x in xs], base[s], s.start * 10)
    stats.finish(0)
    ctx = TensorContext("w", stats=stats)
    parts = torch.cat([_plus(base[s], [x[s] for x in xs], ctx, r=0.5, alpha=1.0) for s in rows])
    torch.testing.assert_close(parts, _plus(base, xs, r=0.5, alpha=1.0), rtol=0, atol=0)


def test_parameters_and_registration():
    assert RamParams().epsilon == 1e-5
    assert (RamPlusParams().r, RamPlusParams().alpha, RamPlusParams().epsilon) == (0.1, 0.2, 1e-5)
    for name in ("ram", "ramplus_tl"):
        method = REGISTRY[name]
        assert method.base == "required" and method.elementwise
    assert REGISTRY["ramplus_tl"].stats is not None


def test_ramplus_through_cli_in_chunks(tmp_path, llama_family, run_cli):
    base, math_, code = llama_family["base"], llama_family["math"], llama_family["code"]
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: ramplus_tl
base_model: {base}
models:
  - model: {math_}
  - model: {code}
parameters:
  epsilon: 0.01
  r: 0.5
  alpha: 2.0
dtype: float32
""",
    )
    res = run_cli(recipe, tmp_path / "whole", "--quiet")
    assert res.code == 0, res.err
    res = run_cli(recipe, tmp_path / "chunked", "--quiet", "--chunk-size", "1KiB")
    assert res.code == 0, res.err
    whole, chunked = load_tensors(tmp_path / "whole"), load_tensors(tmp_path / "chunked")
    b, x, y = load_tensors(base), load_tensors(math_), load_tensors(code)
    for name, t in whole.items():
        torch.testing.assert_close(chunked[name], t, rtol=0, atol=0)
        torch.testing.assert_close(t, ref_ram(b[name], [x[name], y[name]], 0.01, 0.5, 2.0))
