"""The C linear merge gives torch's bytes: every bfloat16 value in every model's place,
float32 at random, with and without normalising, and torch's own path where a result is NaN."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.kernels import Kernels
from mergekit_like.methods.linear import LinearModelParams, LinearParams, linear_merge
from mergekit_like.methods.spec import TensorContext
from mergekit_like.native.soup import SoupPass

SOUP = SoupPass.open()
pytestmark = pytest.mark.skipif(SOUP.lib is None, reason=f"no C kernel: {SOUP.error}")
INT = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


def torch_linear(xs: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """linear.py's torch operations, written out."""
    w = torch.tensor(weights, dtype=torch.float32)
    out = torch.zeros_like(xs[0], dtype=torch.float32)
    for i, x in enumerate(xs):
        out.addcmul_(x, w[i])
    if normalize:
        out.div_(w.reshape(1, -1).sum(dim=1).reshape(()))
    return out.to(xs[0].dtype)


def inputs(dtype: torch.dtype, seed: int, models: int) -> list[torch.Tensor]:
    """bfloat16: each model holds every finite bit pattern once, in its own order (2^16
    entries, so every value meets random others in every place); float32: random."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.float32:
        return [torch.randn(70_001, generator=gen) * 10.0 ** (k - 1) for k in range(models)]
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    every = every[every.isfinite()]
    return [every[torch.randperm(every.numel(), generator=gen)] for _ in range(models)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.3, -0.7, 1 / 3], [2.5], [0.1, 0.9]])
@pytest.mark.parametrize("normalize", [True, False])
def test_soup_is_torchs_linear(dtype, weights, normalize):
    xs = inputs(dtype, len(weights), len(weights))
    want = torch_linear(xs, weights, normalize)
    w = torch.tensor(weights, dtype=torch.float32)
    got = SOUP.soup(xs, w, w.reshape(1, -1).sum(dim=1).reshape(()) if normalize else None)
    if got is None:  # a NaN (inf - inf): torch's path is taken instead
        assert want.isnan().any()
        return
    assert torch.equal(got.view(INT[dtype]), want.view(INT[dtype]))


def test_soup_reports_nan_and_linear_merge_then_takes_torchs_path():
    xs = [torch.tensor([1.0, float("nan"), 2.0] * 5000), torch.ones(15000)]
    w = torch.tensor([1.0, 1.0])
    assert SOUP.soup(xs, w, None) is None
    ctx = TensorContext("w", kernels=Kernels("eager"))
    params = [LinearModelParams(weight=1.0)] * 2
    got = linear_merge(xs, None, params, LinearParams(normalize=True), ctx)
    want = torch_linear(xs, [1.0, 1.0], True)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_merge_same_bytes_with_and_without_the_kernel(dtype):
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(257, 300, generator=gen).to(dtype) for _ in range(3)]
    params = [LinearModelParams(weight=w) for w in (0.2, 0.5, 0.3)]
    with_c = linear_merge(xs, None, params, LinearParams(), TensorContext("w"))
    plain = linear_merge(
        xs, None, params, LinearParams(), TensorContext("w", kernels=Kernels(native_kernels=False))
    )
    assert torch.equal(with_c.view(INT[dtype]), plain.view(INT[dtype]))
    assert torch.equal(
        plain.view(INT[dtype]), torch_linear(xs, [0.2, 0.5, 0.3], True).view(INT[dtype])
    )
