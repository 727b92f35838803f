"""The Gram matrix's block sums in C (``gram.c``), float32: :class:`~.methods.gram.Gram`'s
pass for the spherical methods (slerp, nuslerp, multislerp, karcher).

``BlockSums.add`` of each product ``x_i * x_j`` writes the product, then halves it twelve
times in torch, one pass over memory each. The kernel multiplies and sums each block of 4096
entries in registers and cache, in the same order (same bytes, tests/native/test_gram.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_like.methods.reductions import BLOCK
from mergekit_like.native.build import BuildError, load

if TYPE_CHECKING:
    import torch

SOURCE = Path(__file__).with_name("gram.c")
MAX_VECTORS = 16


@dataclass(frozen=True)
class GramPass:
    """The loaded kernel, or why there is none (``error``). Safe from any thread."""

    lib: ctypes.CDLL | None
    error: str = ""

    @classmethod
    def open(cls) -> GramPass:
        """Build (or take from the cache) and load the kernel; never raises."""
        try:
            lib = load(SOURCE)
        except BuildError as exc:
            return cls(None, str(exc))
        lib.mk_gram_blocks_f32.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                                           ctypes.c_void_p, ctypes.c_int]
        return cls(lib)

    def supports(self, xs: Sequence[torch.Tensor]) -> bool:
        """Whether :meth:`block_sums` takes these: 1 to 16 flat float32 CPU tensors,
        contiguous, of one length."""
        import torch

        return (self.lib is not None and 0 < len(xs) <= MAX_VECTORS
                and all(x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 1
                        and x.is_contiguous() and x.numel() == xs[0].numel() for x in xs))

    def block_sums(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per pair ``i <= j`` (in order ``(0, 0), (0, 1), ..., (1, 1), ...``), the tree sums
        of ``x_i * x_j`` over each block of :data:`~.reductions.BLOCK` entries: a
        ``(pairs, blocks)`` tensor (the lengths must be whole blocks; see :meth:`supports`)."""
        import torch

        assert self.lib is not None and self.supports(xs)
        blocks, rest = divmod(xs[0].numel(), BLOCK)
        if rest:
            raise ValueError(f"block sums take whole blocks of {BLOCK} entries")
        n = len(xs)
        out = torch.empty(n * (n + 1) // 2, blocks)
        pointers = (ctypes.c_void_p * n)(*(x.data_ptr() for x in xs))
        rc = self.lib.mk_gram_blocks_f32(ctypes.addressof(pointers), n, blocks, out.data_ptr(),
                                         torch.get_num_threads())
        if rc != 0:
            raise ValueError(f"the Gram kernel refused {n} vectors ({rc})")
        return out
