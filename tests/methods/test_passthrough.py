"""passthrough: the single input, times scale."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.methods.passthrough import PassthroughModelParams, passthrough_merge
from mergekit_like.methods.spec import NoParams


def test_copies_and_scales():
    x = torch.arange(6.0).reshape(2, 3)
    out = passthrough_merge([x.clone()], None, [PassthroughModelParams()], NoParams(),
                            TensorContext("t"))
    assert torch.equal(out, x)
    out = passthrough_merge([x.clone()], None, [PassthroughModelParams(scale=0.5)], NoParams(),
                            TensorContext("t"))
    torch.testing.assert_close(out, x * 0.5)


def test_exactly_one_input():
    with pytest.raises(ValueError):
        passthrough_merge([torch.zeros(1), torch.zeros(1)], None,
                          [PassthroughModelParams()] * 2, NoParams(), TensorContext("t"))
    assert REGISTRY["passthrough"].max_models == 1
