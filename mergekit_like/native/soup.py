"""The linear merge in C, ``soup.c``: float32 and bfloat16 inputs, one loop over the entries.

Torch's linear merge (:func:`mergekit_like.methods.linear.linear_merge`) makes a float32
accumulator, one ``addcmul_`` per model (on a CPU with FMA, one rounding each), a true
division and the rounding to the inputs' dtype, each a pass over the tensor (and a float32
copy of every bfloat16 input); this loop does the same operations per entry, so the bytes
are the same (tests/native/test_soup.py), reading each input once. Used only where torch's
``addcmul_`` fuses (its CPU kernels built for AVX2 or AVX-512).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_like.native.build import BuildError, load

if TYPE_CHECKING:
    import torch

SOURCE = Path(__file__).with_name("soup.c")
MAX_MODELS = 64
FUSING = ("AVX2", "AVX512")
"""torch's CPU capabilities whose ``addcmul_`` rounds once (a fused multiply-add)."""


@dataclass(frozen=True)
class SoupPass:
    """The loaded kernel, or why there is none (``error``). Safe from any thread."""

    lib: ctypes.CDLL | None
    error: str = ""

    @classmethod
    def open(cls) -> SoupPass:
        """Build (or take from the cache) and load the kernel; never raises."""
        import torch

        if torch.backends.cpu.get_cpu_capability() not in FUSING:
            return cls(None, "torch's CPU kernels here do not fuse multiply-adds")
        try:
            lib = load(SOURCE)
        except BuildError as exc:
            return cls(None, str(exc))
        ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.mk_soup.argtypes = [ptr, i32, ptr, i32, ctypes.c_float, ptr, i64, i32, i32]
        lib.mk_soup.restype = i32
        return cls(lib)

    def supports(self, xs: Sequence[torch.Tensor]) -> bool:
        """Whether :meth:`soup` takes these tensors: one dtype, float32 or bfloat16, on the
        CPU, contiguous, of one shape, at most 64 of them."""
        import torch

        first = xs[0]
        return (
            self.lib is not None
            and 0 < len(xs) <= MAX_MODELS
            and first.dtype in (torch.float32, torch.bfloat16)
            and all(
                x.dtype == first.dtype
                and x.device.type == "cpu"
                and x.is_contiguous()
                and x.shape == first.shape
                for x in xs
            )
        )

    def soup(
        self, xs: Sequence[torch.Tensor], weights: torch.Tensor, total: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``sum_i weights[i] * xs[i]`` (fused, in order, from +0.0 in float32), divided by
        ``total`` when given, in the inputs' dtype; None when a result is NaN (torch's NaN
        bits differ between its loops: the caller merges with torch instead).
        ``weights``, ``total``: float32 tensors (as the linear merge makes them)."""
        import torch

        assert self.lib is not None and self.supports(xs)
        first = xs[0]
        out = torch.empty_like(first)
        w = weights.to(torch.float32).contiguous()
        pointers = (ctypes.c_void_p * len(xs))(*(x.data_ptr() for x in xs))
        rc = self.lib.mk_soup(
            ctypes.addressof(pointers),
            len(xs),
            w.data_ptr(),
            int(total is not None),
            float(total) if total is not None else 1.0,
            out.data_ptr(),
            first.numel(),
            int(first.dtype == torch.bfloat16),
            torch.get_num_threads(),
        )
        if rc < 0:
            raise ValueError(f"the linear kernel refused its inputs ({rc})")
        return None if rc else out
