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
    out = linear_merge([x.clone() for x in xs], None, [LinearModelParams(weight=v) for v in w],
                       LinearParams(normalize=normalize), TensorContext("t"))
    expected = 0.2 * xs[0] + 0.5 * xs[1] + 1.3 * xs[2]
    if normalize:
        expected = expected / 2.0
    torch.testing.assert_close(out, expected)


def test_uniform_soup_is_the_mean():
    xs = _inputs()
    out = linear_merge([x.clone() for x in xs], None, [LinearModelParams()] * 3, LinearParams(),
                       TensorContext("t"))
    torch.testing.assert_close(out, (xs[0] + xs[1] + xs[2]) / 3)


def test_zero_weight_sum_is_an_error():
    with pytest.raises(ValueError, match="sum to zero"):
        weights = [LinearModelParams(weight=1), LinearModelParams(weight=-1)]
        linear_merge(_inputs()[:2], None, weights, LinearParams(), TensorContext("t"))


def test_registered_as_elementwise_without_base():
    m = REGISTRY["linear"]
    assert m.elementwise and m.base == "unused" and m.merge is linear_merge
