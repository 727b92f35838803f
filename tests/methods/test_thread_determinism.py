"""Every method gives the same bytes on 1 and 2 threads (large tensors, where torch splits work).

Whole-tensor reductions (norms, dot products, sums) in torch add partial sums in an order that
depends on the thread count; methods use the stable reductions of methods/reductions.py.
"""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods import REGISTRY, TensorContext

REQUIRED = {"t": 0.3}  # parameters without defaults


def _params(model):
    fields = {(info.alias or name): REQUIRED[info.alias or name]
              for name, info in model.model_fields.items() if info.is_required()}
    return model.model_validate(fields)


def _run(method, threads: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(384, 700, generator=g)
    n = max(method.min_models, 2 if method.max_models is None else min(2, method.max_models))
    tensors = [base + 0.05 * torch.randn(384, 700, generator=g) for _ in range(n)]
    model_params = [_params(method.model_params) for _ in tensors]
    base_arg = base if method.base != "unused" else None
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return method.merge([t.clone() for t in tensors], None if base_arg is None else
                            base_arg.clone(), model_params, _params(method.params),
                            TensorContext("model.layers.0.mlp.up_proj.weight", seed=3))
    finally:
        torch.set_num_threads(old)


# the spherical methods and model_stock reduce with mergekit's own torch calls
# (methods/pieces.py, nuslerp.py, model_stock.py), whose sums follow the thread count as
# mergekit's do; tests/methods/test_slerp.py, test_nuslerp.py and test_torch_order_sums.py
# check mergekit's bytes (sce's energies are row sums of a stack, which torch does not split
# among threads; ties' `rescale` is off by default)
MERGEKIT_ORDER = {"slerp", "nuslerp", "multislerp", "karcher", "model_stock"}


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - MERGEKIT_ORDER))
def test_same_bytes_on_one_and_two_threads(name):
    method = REGISTRY[name]
    one, two = _run(method, 1), _run(method, 2)
    assert torch.equal(one, two), f"{name}: max diff {(one - two).abs().max().item()}"
