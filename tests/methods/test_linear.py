"""linear: sum(w_i x_i) / sum(w_i), or the plain weighted sum without normalize."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.methods.linear import LinearModelParams, LinearParams, linear_merge


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 6, generator=g) for _ in range(3)]


@pytest.mark.parametrize("normalize", [True, False])
def test_weighted_average(normalize):
    xs = _inputs()
    w = [0.2, 0.5, 1.3]
    out = linear_merge(
        [x.clone() for x in xs],
        None,
        [LinearModelParams(weight=v) for v in w],
        LinearParams(normalize=normalize),
        TensorContext("t"),
    )
    expected = 0.2 * xs[0] + 0.5 * xs[1] + 1.3 * xs[2]
    if normalize:
        expected = expected / 2.0
    torch.testing.assert_close(out, expected)


def test_uniform_soup_is_the_mean():
    xs = _inputs()
    out = linear_merge(
        [x.clone() for x in xs], None, [LinearModelParams()] * 3, LinearParams(), TensorContext("t")
    )
    torch.testing.assert_close(out, (xs[0] + xs[1] + xs[2]) / 3)


def test_zero_weight_sum_is_an_error():
    with pytest.raises(ValueError, match="sum to zero"):
        weights = [LinearModelParams(weight=1), LinearModelParams(weight=-1)]
        linear_merge(_inputs()[:2], None, weights, LinearParams(), TensorContext("t"))


def test_registered_as_elementwise_without_base():
    m = REGISTRY["linear"]
    assert m.elementwise and m.base == "unused" and m.merge is linear_merge


def _mergekit_rounding(xs, weights, normalize):
    """mergekit's linear, written out: an accumulator of zeros in float32, one fused
    multiply-add per model (exact product, one rounding: done in float64, where the product
    of two float32 numbers is exact), then a true division by the float32 running sum of the
    float32 weights."""
    w32 = torch.tensor(weights, dtype=torch.float32)
    acc = torch.zeros_like(xs[0], dtype=torch.float32)
    for x, w in zip(xs, w32, strict=True):
        acc = (acc.double() + x.double() * w.double()).float()
    if normalize:
        total = torch.zeros((), dtype=torch.float32)
        for w in w32:
            total = total + w
        acc = acc / total
    return acc


@pytest.mark.parametrize("normalize", [True, False])
def test_rounds_as_mergekit_fused_multiply_add_and_float32_weight_sum(normalize):
    # 0.1 + 0.2 + 0.15 is 0.45000002 summed in float32 but 0.45 in float64
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(64, 48, generator=g) for _ in range(3)]
    w = [0.1, 0.2, 0.15]
    out = linear_merge(
        [x.clone() for x in xs],
        None,
        [LinearModelParams(weight=v) for v in w],
        LinearParams(normalize=normalize),
        TensorContext("t"),
    )
    assert torch.equal(out, _mergekit_rounding(xs, w, normalize))


def test_bfloat16_inputs_accumulate_in_float32_and_round_once():
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(32, 40, generator=g).bfloat16() for _ in range(3)]
    w = [0.5, 0.3, 0.2]
    out = linear_merge(
        [x.clone() for x in xs],
        None,
        [LinearModelParams(weight=v) for v in w],
        LinearParams(),
        TensorContext("t"),
    )
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, _mergekit_rounding([x.float() for x in xs], w, True).bfloat16())


def test_a_zero_dim_tensor_merges():
    """CLIP's logit_scale is a 0-d tensor: the weight sum must broadcast to it."""
    a, b = torch.tensor(2.0), torch.tensor(5.0)
    weights = [LinearModelParams(weight=1.0), LinearModelParams(weight=3.0)]
    out = linear_merge([a, b], None, weights, LinearParams(), None)
    assert out.shape == ()
    torch.testing.assert_close(out, torch.tensor((2.0 + 15.0) / 4.0))
