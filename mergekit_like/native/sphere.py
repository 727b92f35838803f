"""The Karcher iteration's elementwise steps in C, ``sphere.c``, float32 and bfloat16.

Each step replaces a chain of whole-tensor torch operations with one loop that rounds where
every torch operation rounds (bfloat16 operations compute in float32 and round their result),
so the bytes are the same and the tensor is read once instead of four times
(tests/native/test_sphere.py checks every bfloat16 value against the torch chain).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_like.native.build import BuildError, load

if TYPE_CHECKING:
    import torch

SOURCE = Path(__file__).with_name("sphere.c")


@dataclass(frozen=True)
class SpherePass:
    """The loaded kernels, or why there are none (``error``). Safe from any thread."""

    lib: ctypes.CDLL | None
    error: str = ""

    @classmethod
    def open(cls) -> SpherePass:
        """Build (or take from the cache) and load the kernels; never raises."""
        try:
            lib = load(SOURCE)
        except BuildError as exc:
            return cls(None, str(exc))
        ptr, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        lib.mk_tangent_add.argtypes = [ptr, ptr, ptr, i64, f32, f32, i32, i32]
        lib.mk_exp_step.argtypes = [ptr, ptr, i64, f32, f32, f32, i32, i32]
        return cls(lib)

    def supports(self, *xs: torch.Tensor) -> bool:
        """Whether the kernels take these tensors: one dtype, float32 or bfloat16, on the
        CPU, contiguous, of one size."""
        import torch

        first = xs[0]
        return (
            self.lib is not None
            and first.dtype in (torch.float32, torch.bfloat16)
            and all(
                x.dtype == first.dtype
                and x.device.type == "cpu"
                and x.is_contiguous()
                and x.numel() == first.numel()
                for x in xs
            )
        )

    def tangent_add(
        self, tangent: torch.Tensor, unit: torch.Tensor, mean: torch.Tensor, dot: float, coef: float
    ) -> None:
        """``tangent += coef * (unit - dot * mean)``, in place, rounded as those four torch
        operations round in the tensors' dtype (``dot`` and ``coef``: the values of 0-dim
        tensors of that dtype)."""
        import torch

        assert self.lib is not None and self.supports(tangent, unit, mean)
        self.lib.mk_tangent_add(
            tangent.data_ptr(),
            unit.data_ptr(),
            mean.data_ptr(),
            tangent.numel(),
            dot,
            coef,
            int(tangent.dtype == torch.bfloat16),
            torch.get_num_threads(),
        )

    def exp_step(
        self, mean: torch.Tensor, tangent: torch.Tensor, cos: float, sin: float, norm: float
    ) -> None:
        """``mean = mean * cos + sin * (tangent / norm)``, in place, rounded as those four
        torch operations round in the tensors' dtype (``cos``, ``sin``, ``norm``: float32
        0-dim tensors' values)."""
        import torch

        assert self.lib is not None and self.supports(mean, tangent)
        self.lib.mk_exp_step(
            mean.data_ptr(),
            tangent.data_ptr(),
            mean.numel(),
            cos,
            sin,
            norm,
            int(mean.dtype == torch.bfloat16),
            torch.get_num_threads(),
        )
