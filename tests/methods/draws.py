"""Random draws written out as ``mergekit_like.methods.spec.Draws`` documents them."""

from __future__ import annotations

import math

import torch

from mergekit_like.methods.spec import tensor_seed


def documented_draws(seed: int, name: str, model: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Model ``model``'s draws for tensor ``name``: one generator per block of 2**20 entries
    seeded with ``tensor_seed(seed, f"{name}\\0{model}\\0{block}")``, block by block."""
    numel = math.prod(shape)
    blocks = []
    for block, first in enumerate(range(0, numel, 2**20)):
        gen = torch.Generator().manual_seed(tensor_seed(seed, f"{name}\0{model}\0{block}"))
        blocks.append(torch.rand(min(2**20, numel - first), generator=gen))
    return torch.cat(blocks).view(shape)
