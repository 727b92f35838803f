"""slerp: spherical interpolation from the base (t=0) to the other model (t=1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mergekit_like.methods import REGISTRY
from mergekit_like.methods.slerp import SlerpParams, slerp_merge
from mergekit_like.methods.spec import NoParams, TensorContext
from tests.conftest import load_tensors, write_recipe

CTX = TensorContext("w")


def ref_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The textbook formula on the unnormalised tensors, in float64 numpy."""
    x, y = a.double().numpy(), b.double().numpy()
    cos = float(np.sum(x * y) / (np.linalg.norm(x) * np.linalg.norm(y)))
    theta = np.arccos(cos)
    out = (np.sin((1 - t) * theta) * x + np.sin(t * theta) * y) / np.sin(theta)
    return torch.from_numpy(out).float()


def run(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return slerp_merge([other.clone()], base.clone(), [NoParams()], SlerpParams(t=t), CTX)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(4, 6), torch.randn(4, 6)


@pytest.mark.parametrize("t", [0.25, 0.5, 0.9])
def test_matches_formula(pair, t):
    base, other = pair
    torch.testing.assert_close(run(t, base, other), ref_slerp(t, base, other))


def test_endpoints_give_the_models(pair):
    base, other = pair
    torch.testing.assert_close(run(0.0, base, other), base, rtol=0, atol=1e-7)
    torch.testing.assert_close(run(1.0, base, other), other, rtol=1e-6, atol=1e-6)


def _at_angle(cos: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 3-vectors of norms 1 and 2 whose cosine is ``cos``."""
    sin = float(np.sqrt(1 - cos * cos))
    return torch.tensor([1.0, 0.0, 0.0]), 2.0 * torch.tensor([cos, sin, 0.0])


def test_nearly_colinear_falls_back_to_lerp():
    base, other = _at_angle(0.9996)  # |cos| > 0.9995
    t = 0.3
    lerp = (1 - t) * base + t * other
    got = run(t, base, other)
    torch.testing.assert_close(got, lerp, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got, ref_slerp(t, base, other), rtol=1e-6, atol=1e-7)


def test_just_below_threshold_is_spherical():
    base, other = _at_angle(0.9994)
    t = 0.3
    got = run(t, base, other)
    torch.testing.assert_close(got, ref_slerp(t, base, other), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got, (1 - t) * base + t * other, rtol=1e-6, atol=1e-7)


def test_opposite_tensors_are_interpolated_linearly(pair):
    base, _ = pair
    other = -2.0 * base
    torch.testing.assert_close(run(0.4, base, other), 0.6 * base + 0.4 * other)


def test_zero_tensor_is_not_normalised(pair):
    # a zero vector keeps cos = 0, so theta = pi/2: out = cos(t pi/2) base + sin(t pi/2) other
    _, other = pair
    base = torch.zeros(4, 6)
    t = 0.3
    torch.testing.assert_close(run(t, base, other), float(np.sin(t * np.pi / 2)) * other)


def test_parameters_and_registration():
    with pytest.raises(ValidationError):
        SlerpParams()  # t is required, as in mergekit
    with pytest.raises(ValidationError):
        SlerpParams(t=1.5)
    method = REGISTRY["slerp"]
    assert (method.base, method.min_models, method.max_models) == ("required", 1, 1)
    assert method.elementwise and method.stats is not None  # row chunks after a norms pass


def test_merge_through_cli(tmp_path, llama_family, run_cli):
    base, math = llama_family["base"], llama_family["math"]
    recipe = write_recipe(tmp_path, f"""
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {math}
parameters:
  t:
    - filter: self_attn
      value: [0.0, 1.0]
    - filter: mlp
      value: 0.7
    - value: 0.3
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b, out = load_tensors(base), load_tensors(math), load_tensors(tmp_path / "out")
    q0, q1 = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(out[q0], a[q0], rtol=0, atol=1e-7)
    torch.testing.assert_close(out[q1], b[q1], rtol=1e-6, atol=1e-6)
    up = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(out[up], ref_slerp(0.7, a[up], b[up]))
    # layer norms start at 1 and move by small noise: colinear, so linear interpolation
    ln = "model.layers.1.input_layernorm.weight"
    cos = torch.nn.functional.cosine_similarity(a[ln], b[ln], dim=0)
    assert cos > 0.9995
    torch.testing.assert_close(out[ln], 0.7 * a[ln] + 0.3 * b[ln])


def test_two_models_besides_the_base_are_refused(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, f"""
merge_method: slerp
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
  - model: {llama_family['code']}
parameters: {{t: 0.5}}
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert "exactly 1 model" in res.err


def mergekit_order_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mergekit 0.1.5's slerp written out in its torch calls and order: float32 pieces of
    2^20 entries of the flat tensors, norms of the pieces' norms, sums of products of the
    normalised pieces, coefficients in float32 tensors, the result in the inputs' dtype."""
    piece, x, y = 1 << 20, a.reshape(1, -1), b.reshape(1, -1)
    starts = range(0, x.shape[1], piece)

    def cut(v, s):
        return v[:, s:s + piece].float()

    na = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(cut(x, s), dim=1, keepdim=True) for s in starts]), dim=0)
    nb = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(cut(y, s), dim=1, keepdim=True) for s in starts]), dim=0)
    na, nb = torch.where(na > 1e-8, na, 1), torch.where(nb > 1e-8, nb, 1)
    dot = torch.stack([((cut(x, s) / na) * (cut(y, s) / nb)).sum(dim=1, keepdim=True)
                       for s in starts]).sum(dim=0).clamp(-1, 1)
    tt = torch.tensor([t], dtype=torch.float32).reshape(-1, 1)
    linear = dot.abs() > 0.9995
    theta = torch.acos(torch.where(linear, 0, dot))
    sin = torch.sin(theta)
    ca = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin)
    cb = torch.where(linear, tt, torch.sin(tt * theta) / sin)
    out = torch.empty_like(x)
    for s in starts:
        out[:, s:s + piece] = ca * cut(x, s) + cb * cut(y, s)
    return out.reshape(a.shape)


def _stats_in_row_chunks(t: float, base: torch.Tensor, other: torch.Tensor,
                         rows: int) -> torch.Tensor:
    """slerp over row chunks of ``rows`` rows, as the executor runs it: the statistics
    rounds, then each chunk merged."""
    stats = REGISTRY["slerp"].stats(tuple(base.shape), 32, [NoParams()], SlerpParams(t=t), CTX)
    for round_ in range(stats.rounds):
        for r in range(0, base.shape[0], rows):
            stats.observe(round_, [other[r:r + rows]], base[r:r + rows], r)
        stats.finish(round_)
    ctx = TensorContext("w", stats=stats)
    return torch.cat([slerp_merge([other[r:r + rows].clone()], base[r:r + rows].clone(),
                                  [NoParams()], SlerpParams(t=t), ctx)
                      for r in range(0, base.shape[0], rows)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [0.3, 0.77])
def test_bytes_are_mergekits_in_its_float32_op_order(t, dtype):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(96, 128, generator=g)
    other = (base + 0.6 * torch.randn(96, 128, generator=g)).to(dtype)
    base = base.to(dtype)
    want = mergekit_order_slerp(t, base, other)
    assert want.dtype == dtype
    assert torch.equal(run(t, base, other), want)


def test_pieces_of_large_tensors_and_row_chunks_give_mergekits_bytes():
    # 1100 x 1000: two pieces of mergekit's 2^20 entries; chunks of 300 rows end inside them
    g = torch.Generator().manual_seed(6)
    base = torch.randn(1100, 1000, generator=g)
    other = base + 0.5 * torch.randn(1100, 1000, generator=g)
    want = mergekit_order_slerp(0.4, base, other)
    assert torch.equal(run(0.4, base, other), want)
    assert torch.equal(_stats_in_row_chunks(0.4, base, other, 300), want)
    assert torch.equal(_stats_in_row_chunks(0.4, base, other, 1100), want)


def test_colinear_lerp_uses_float32_coefficients():
    # t = 0.058: float32 1 - float32(t) is one ulp off float32(1 - t) (the float64 value)
    base, other = _at_angle(0.9999)
    base, other = base * 1.37, other * 0.91
    assert torch.equal(run(0.058, base, other), mergekit_order_slerp(0.058, base, other))


@pytest.mark.parametrize("threads", [1, 2])
def test_mergekits_bytes_on_each_thread_count(threads):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(384, 700, generator=g)
    other = base + 0.05 * torch.randn(384, 700, generator=g)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        want = mergekit_order_slerp(0.3, base, other)
        assert torch.equal(_stats_in_row_chunks(0.3, base, other, 100), want)
    finally:
        torch.set_num_threads(old)


def test_an_empty_tensor_gives_an_empty_tensor():
    # mergekit: no entries, no angle: (1 - t) * a + t * b of nothing
    got = run(0.3, torch.zeros(0, 4), torch.zeros(0, 4))
    assert got.shape == (0, 4)
