"""Random draws written out as ``mergekit_like.methods.spec.Draws`` documents them."""

from __future__ import annotations

import math

import torch

from mergekit_like.methods.draws import tensor_seed

M32 = 0xFFFFFFFF


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' 32-bit hash (second constants) on int64 values below 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & M32
    return x ^ (x >> 15)


def documented_draws(seed: int, name: str, model: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Model ``model``'s draws for tensor ``name``: entry ``i`` draws ``(h >> 8) / 2**24``
    with ``h = mix(mix((i mod 2**32) ^ k0) ^ (i >> 32) ^ k1)``, ``(k0, k1)`` the halves of
    ``tensor_seed(seed, f"{name}\\0{model}")``."""
    key = tensor_seed(seed, f"{name}\0{model}")
    i = torch.arange(math.prod(shape), dtype=torch.int64)
    h = lowbias32(lowbias32((i & M32) ^ (key & M32)) ^ (i >> 32) ^ (key >> 32))
    return ((h >> 8).double() / 2**24).float().view(shape)
