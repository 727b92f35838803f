"""Random draws of the random trims (DARE, DELLA): counter-based, the same on every device.

A draw is a hash of the run's seed, the tensor's name, the model's index and the entry's
flat position, so it never depends on how a tensor is split into chunks, which process
computes it, or the device. The compiled kernels (:mod:`.kernels`) compute the draws where
they use them; :meth:`Draws.take` materialises them for the eager passes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the run's seed and the tensor's name.

    Random masks depend only on (seed, name), never on the order or the process that
    computes a tensor, so outputs are byte-identical however the work is scheduled.

    >>> tensor_seed(0, "model.layers.0.mlp.up_proj.weight") == tensor_seed(0, "model.layers.0.mlp.up_proj.weight")
    True
    """  # noqa: E501
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 values in ``[0, 2**32)`` (C. Wellons' "lowbias32",
    second constants), updated in place. Every product stays below ``2**63``."""
    x.bitwise_xor_(x >> 16)
    x.mul_(0x21F0AAAD).bitwise_and_(0xFFFFFFFF)
    x.bitwise_xor_(x >> 15)
    x.mul_(0x735A2D97).bitwise_and_(0xFFFFFFFF)
    return x.bitwise_xor_(x >> 15)


def counter_uniforms(index: torch.Tensor, k0: int | torch.Tensor,
                     k1: int | torch.Tensor) -> torch.Tensor:
    """The uniform draws of flat ``index`` (int64) under key ``(k0, k1)`` (:class:`Draws`)."""
    import torch

    h = mix32((index & 0xFFFFFFFF).bitwise_xor_(k0))
    h = mix32(h.bitwise_xor_(index >> 32).bitwise_xor_(k1))
    return (h >> 8).to(torch.float32).mul_(1.0 / (1 << 24))


@dataclass(frozen=True)
class Draws:
    """Uniform float32 draws in ``[0, 1)``, one per entry of a tensor, for one model.

    Counter-based: entry ``i`` (flat) draws ``(h >> 8) / 2**24`` with
    ``h = mix32(mix32((i mod 2**32) ^ k0) ^ (i >> 32) ^ k1)``, where ``k0`` and ``k1`` are
    the low and high 32 bits of ``tensor_seed(seed, f"{name}\\0{model}")``, and
    :func:`mix32` a 32-bit integer hash. So a draw depends only on the run's seed, the
    tensor, the model's index and the entry: never on how the tensor is split into chunks,
    nor on the device. Compiled kernels compute the
    draws where they use them (:mod:`~mergekit_like.methods.passes`).

    >>> import torch
    >>> d = Draws(0, "w", 0, 10)
    >>> torch.equal(d.take(3, 7, "cpu"), d.take(0, 10, "cpu")[3:7])
    True
    """

    seed: int
    name: str
    model: int
    numel: int

    @property
    def key(self) -> tuple[int, int]:
        """``(k0, k1)``: the low and high 32 bits of the model's seed for this tensor."""
        key = tensor_seed(self.seed, f"{self.name}\0{self.model}")
        return key & 0xFFFFFFFF, key >> 32

    def take(self, start: int, stop: int, device: torch.device | str) -> torch.Tensor:
        """The draws of entries ``[start, stop)``, a flat float32 tensor on ``device``."""
        import torch

        index = torch.arange(start, max(start, stop), dtype=torch.int64, device=device)
        return counter_uniforms(index, *self.key)
