"""nuslerp: weighted SLERP of two models, whole tensors or vector by vector, optional base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergekit_like.methods import REGISTRY
from mergekit_like.methods.nuslerp import NuSlerpModelParams, NuSlerpParams, nuslerp_merge
from mergekit_like.methods.spec import TensorContext
from tests.conftest import load_tensors, write_recipe

CTX = TensorContext("w")


def ref_vec(t: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SLERP of two 1-D float64 vectors (unnormalised), the textbook formula."""
    cos = np.clip(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), -1, 1)
    theta = np.arccos(cos)
    return (np.sin((1 - t) * theta) * x + np.sin(t * theta) * y) / np.sin(theta)


def ref_rows(t: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([ref_vec(t, r, s) for r, s in zip(x, y, strict=True)])


def run(tensors, weights, base=None, **params) -> torch.Tensor:
    return nuslerp_merge(
        [x.clone() for x in tensors],
        None if base is None else base.clone(),
        [NuSlerpModelParams(weight=w) for w in weights],
        NuSlerpParams(**params),
        CTX,
    )


@pytest.fixture
def three() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)


def np64(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


def test_flattened_by_default_with_t_from_weights(three):
    x, y, _ = three
    expected = ref_vec(0.75, np64(x).ravel(), np64(y).ravel()).reshape(4, 6)  # t = 3 / (1 + 3)
    torch.testing.assert_close(run([x, y], [1.0, 3.0]), torch.from_numpy(expected).float())


def test_last_dimension_vectors_when_not_flattened(three):
    x, y, _ = three
    expected = ref_rows(0.25, np64(x), np64(y))
    got = run([x, y], [3.0, 1.0], nuslerp_flatten=False)
    torch.testing.assert_close(got, torch.from_numpy(expected).float())


def test_row_wise_uses_first_dimension_vectors(three):
    # mergekit's code: row_wise transposes dim 0 to the end, so columns are the vectors
    x, y, _ = three
    expected = ref_rows(0.4, np64(x).T, np64(y).T).T
    got = run([x, y], [0.6, 0.4], nuslerp_flatten=False, nuslerp_row_wise=True)
    torch.testing.assert_close(got, torch.from_numpy(expected).float())


def test_row_wise_is_ignored_when_flattened(three):
    x, y, _ = three
    torch.testing.assert_close(run([x, y], [1.0, 2.0], nuslerp_row_wise=True),
                               run([x, y], [1.0, 2.0]))


def test_base_model_slerps_task_vectors(three):
    x, y, base = three
    dx, dy = np64(x - base).ravel(), np64(y - base).ravel()
    expected = np64(base) + ref_vec(0.5, dx, dy).reshape(4, 6)
    torch.testing.assert_close(run([x, y], [1.0, 1.0], base), torch.from_numpy(expected).float())


def test_zero_weight_gives_the_remaining_model(three):
    x, y, base = three
    torch.testing.assert_close(run([x, y], [2.0, 0.0]), x, rtol=0, atol=1e-7)
    torch.testing.assert_close(run([x, y], [0.0, 2.0]), y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(run([x, y], [0.0, 1.0], base), y)


def test_weights_summing_to_zero_use_t_one_half(three):
    x, y, _ = three
    torch.testing.assert_close(run([x, y], [1.0, -1.0]), run([x, y], [1.0, 1.0]))


def test_colinear_rows_fall_back_to_lerp(three):
    x, y, _ = three
    x[0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    y[0] = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # same direction: sin(theta) = 0
    got = run([x, y], [0.5, 0.5], nuslerp_flatten=False)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[0], 0.5 * x[0] + 0.5 * y[0])
    expected = ref_rows(0.5, np64(x[1:]), np64(y[1:]))
    torch.testing.assert_close(got[1:], torch.from_numpy(expected).float())


def test_parameters_and_registration():
    p = NuSlerpParams()
    assert (p.nuslerp_flatten, p.nuslerp_row_wise) == (True, False)
    assert NuSlerpModelParams().weight == 1.0
    method = REGISTRY["nuslerp"]
    assert (method.base, method.min_models, method.max_models) == ("optional", 2, 2)
    # row chunks; of whole 4096-row blocks where the vectors run along dim 0 (their sums
    # are gathered over the chunks first)
    # mergekit reduces the whole tensor in one torch call: only row by row in row chunks
    assert method.stats is None and not method.elementwise(NuSlerpParams())
    assert method.elementwise(NuSlerpParams(nuslerp_flatten=False))
    assert not method.elementwise(NuSlerpParams(nuslerp_flatten=False, nuslerp_row_wise=True))


def test_merge_through_cli(tmp_path, llama_family, run_cli):
    base, math, code = llama_family["base"], llama_family["math"], llama_family["code"]
    recipe = write_recipe(tmp_path, f"""
merge_method: nuslerp
base_model: {base}
models:
  - model: {math}
    parameters: {{weight: 1.0}}
  - model: {code}
    parameters: {{weight: 3.0}}
parameters:
  nuslerp_flatten: false
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    b, m, c = load_tensors(base), load_tensors(math), load_tensors(code)
    out = load_tensors(tmp_path / "out")
    name = "model.layers.1.mlp.down_proj.weight"
    expected = np64(b[name]) + ref_rows(0.75, np64(m[name] - b[name]), np64(c[name] - b[name]))
    torch.testing.assert_close(out[name], torch.from_numpy(expected).float())


def test_base_among_the_two_models_is_refused(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, f"""
merge_method: nuslerp
base_model: {llama_family['base']}
models:
  - model: {llama_family['base']}
  - model: {llama_family['math']}
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert "exactly 2 model" in res.err


def mergekit_order_nuslerp(t: float, x: torch.Tensor, y: torch.Tensor,
                           base: torch.Tensor | None) -> torch.Tensor:
    """mergekit 0.1.5's flattened nuslerp written out in its torch calls and order: task
    vectors in the inputs' dtype, whole-tensor norms clamped at 1e-7, the whole tensor's sum
    of the normalised products, ``1 - cos^2 <= 1e-16`` colinear, the sines times the
    vectors, their sum divided by ``sin(theta)``, the base added back."""
    v0, v1 = (x, y) if base is None else (x - base, y - base)
    v0, v1 = v0.reshape(-1), v1.reshape(-1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= 1e-8**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out).reshape(x.shape)
    return out if base is None else base + out


@pytest.mark.parametrize("with_base", [False, True])
def test_flattened_bytes_are_mergekits(with_base):
    g = torch.Generator().manual_seed(8)
    base = torch.randn(300, 200, generator=g)
    x, y = (base + 0.3 * torch.randn(300, 200, generator=g) for _ in range(2))
    b = base if with_base else None
    assert torch.equal(run([x, y], [0.3, 0.7], b), mergekit_order_nuslerp(0.7, x, y, b))


@pytest.mark.parametrize("threads", [1, 2])
def test_flattened_gives_mergekits_bytes_on_each_thread_count(threads):
    g = torch.Generator().manual_seed(9)
    base = torch.randn(384, 700, generator=g)
    x, y = (base + 0.05 * torch.randn(384, 700, generator=g) for _ in range(2))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.equal(run([x, y], [0.6, 0.4], base),
                           mergekit_order_nuslerp(0.4, x, y, base))
    finally:
        torch.set_num_threads(old)


def mergekit_order_vectors(t: float, x: torch.Tensor, y: torch.Tensor, base: torch.Tensor | None,
                           row_wise: bool) -> torch.Tensor:
    """mergekit 0.1.5's nuslerp with ``nuslerp_flatten: false`` in its torch calls: vectors
    along the last dimension, or along dim 0 (transposed to the end) when ``row_wise``."""
    v0, v1 = (x, y) if base is None else (x - base, y - base)
    if row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= 1e-8**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if row_wise:
        out = out.transpose(0, -1)
    return out if base is None else base + out


@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("row_wise", [False, True])
def test_vector_modes_give_mergekits_bytes(with_base, row_wise):
    g = torch.Generator().manual_seed(10)
    base = torch.randn(160, 96, generator=g)
    x, y = (base + 0.3 * torch.randn(160, 96, generator=g) for _ in range(2))
    y[:, 3] = x[:, 3]
    y[5] = x[5]  # a colinear column and row
    b = base if with_base else None
    want = mergekit_order_vectors(0.25, x, y, b, row_wise)
    got = run([x, y], [0.75, 0.25], b, nuslerp_flatten=False, nuslerp_row_wise=row_wise)
    assert torch.equal(got, want)
    if not row_wise:  # whole rows in each chunk, merged with no statistics
        chunks = [run([x[r:r + 7], y[r:r + 7]], [0.75, 0.25], None if b is None else b[r:r + 7],
                      nuslerp_flatten=False) for r in range(0, 160, 7)]
        assert torch.equal(torch.cat(chunks), want)
