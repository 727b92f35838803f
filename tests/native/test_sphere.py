"""The Karcher iteration's C steps give the torch operations' bytes: every bfloat16 value of
every operand, float32 at random, and the whole Karcher mean with and without them."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.karcher import karcher_whole
from mergekit_like.methods.kernels import Kernels
from mergekit_like.native.sphere import SpherePass

SPHERE = SpherePass.open()
pytestmark = pytest.mark.skipif(SPHERE.lib is None, reason=f"no C kernel: {SPHERE.error}")
INT = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, NaN for NaN (torch's own NaN bits differ between its vector and
    scalar loops)."""
    nan = a.isnan() & b.isnan()
    return bool(((a.view(INT[a.dtype]) == b.view(INT[b.dtype])) | nan).all())


def operands(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """Three tensors of 2^16 entries: in bfloat16 each holds every bit pattern once (NaNs,
    infinities, subnormals, -0.0), in another order; in float32, random of three scales."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bfloat16:
        every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
        return tuple(every[torch.randperm(1 << 16, generator=gen)] for _ in range(3))
    return tuple(torch.randn(1 << 16, generator=gen) * s for s in (1.0, 1e-3, 1e-2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("seed", range(4))
def test_tangent_add_is_the_torch_chain(dtype: torch.dtype, seed: int) -> None:
    u, mean, tangent = operands(dtype, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    dot = torch.clamp(torch.randn((), generator=gen).to(dtype), -1.0, 1.0)
    theta = torch.arccos(dot)
    coef = (1 / 3) * (theta / torch.sin(theta))
    want = tangent.clone()
    want += coef * (u - dot * mean)  # karcher.py's torch operations
    got = tangent.clone()
    SPHERE.tangent_add(got, u, mean, dot.item(), coef.item())
    assert same_bytes(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("seed", range(4))
def test_exp_step_is_the_torch_chain(dtype: torch.dtype, seed: int) -> None:
    tangent, mean, _ = operands(dtype, seed)
    gen = torch.Generator().manual_seed(200 + seed)
    norm = torch.rand((), generator=gen) * 3.0 + 1e-3  # a float32 0-dim, as _norm gives
    cos, sin = torch.cos(norm), torch.sin(norm)
    want = (cos * mean + sin * (tangent / norm)).to(dtype)  # karcher.py's torch operations
    got = mean.clone()
    # torch rounds the first operands to the tensor's dtype, not the divisor
    SPHERE.exp_step(got, tangent, cos.to(dtype).item(), sin.to(dtype).item(), norm.item())
    assert same_bytes(got, want)
    assert cos.to(dtype).item() != cos.item() or dtype == torch.float32
    if dtype == torch.bfloat16:  # the rounding of the scalars is seen in the bytes
        unrounded = mean.clone()
        SPHERE.exp_step(unrounded, tangent, cos.item(), sin.item(), norm.item())
        assert not same_bytes(unrounded, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_karcher_whole_same_bytes_with_kernels(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(300, 70, generator=gen)
    xs = [(base + 0.3 * torch.randn(300, 70, generator=gen)).to(dtype) for _ in range(2)]
    xs.append(torch.randn(300, 70, generator=gen).to(dtype))  # far apart: several iterations
    plain = karcher_whole(xs)
    fused = karcher_whole(xs, sphere=SPHERE)
    assert same_bytes(fused, plain)
    assert not same_bytes(karcher_whole(xs, max_iter=1), plain)  # it kept iterating


def test_kernels_offer_sphere_unless_native_off() -> None:
    assert Kernels("eager").sphere() is not None
    assert Kernels("eager", native_kernels=False).sphere() is None
