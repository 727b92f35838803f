"""The bracket round's pass in C: :meth:`.rank_bracket.BracketTally.add` of ``|x - base|``.

The C kernel (``bracket.c``) computes the float32 magnitudes itself, so the pass reads the
two inputs once and writes almost nothing: on x86-64 with AVX2 about 0.5 ns per entry here,
against some 2 ns for torch's digits and ``bincount`` (bench/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_like.native.build import BuildError, load

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.rank_bracket import BracketTally

SOURCE = Path(__file__).with_name("bracket.c")
_I64x2, _U32x2, _PTRx2 = ctypes.c_int64 * 2, ctypes.c_uint32 * 2, ctypes.c_void_p * 2


@dataclass
class BracketScan:
    """The loaded kernel, or why there is none (``error``). Make one per run with
    :meth:`open`; :meth:`add` is then safe from any thread."""

    lib: ctypes.CDLL | None
    error: str = ""
    avx2: bool = False
    _warned: list[bool] = field(default_factory=lambda: [False], repr=False)

    @classmethod
    def open(cls) -> BracketScan:
        """Build (or take from the cache) and load the kernel; never raises."""
        try:
            lib = load(SOURCE)
        except BuildError as exc:
            return cls(None, str(exc))
        lib.mk_bracket_init.argtypes = [ctypes.c_int]
        lib.mk_bracket_f32.restype = ctypes.c_int
        lib.mk_bracket_f32.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, _U32x2, _U32x2,
            _I64x2, _I64x2, _PTRx2, _I64x2, _I64x2, ctypes.c_int]
        return cls(lib, avx2=bool(lib.mk_bracket_init(1)))

    def supports(self, x: torch.Tensor, base: torch.Tensor) -> bool:
        """Whether :meth:`add` takes these chunks: float32, on the CPU, contiguous."""
        import torch

        return (self.lib is not None and x.dtype == base.dtype == torch.float32
                and x.device.type == base.device.type == "cpu" and x.is_contiguous()
                and base.is_contiguous() and x.numel() == base.numel())

    def add(self, tally: BracketTally, x: torch.Tensor, base: torch.Tensor) -> None:
        """``tally.add(bits(|x - base|))``, in one pass in C (see :meth:`supports`)."""
        import torch

        assert self.lib is not None and self.supports(x, base)
        n = len(tally.brackets)
        pad = [0] * (2 - n)
        below, at_lo = _I64x2(*tally.below, *pad), _I64x2(*tally.at_lo, *pad)
        inside = _I64x2(*tally.inside, *pad)
        cap = _I64x2(*(b.capacity for b in tally.brackets), *pad)
        out = _PTRx2(*(s.data_ptr() for s in tally.stored), *([None] * (2 - n)))
        lo = _U32x2(*(b.lo for b in tally.brackets), *pad)
        hi = _U32x2(*(b.hi for b in tally.brackets), *pad)
        rc = self.lib.mk_bracket_f32(x.data_ptr(), base.data_ptr(), x.numel(), n, lo, hi,
                                     below, at_lo, out, inside, cap, torch.get_num_threads())
        if rc != 0:
            raise MemoryError("the bracket kernel could not allocate its buffers")
        tally.below[:] = below[:n]
        tally.at_lo[:] = at_lo[:n]
        tally.inside[:] = inside[:n]
        tally.seen += x.numel()

    def warn_once(self) -> None:
        """Say once on stderr why the kernel is missing (the merge goes on, slower)."""
        if self.lib is None and not self._warned[0]:
            self._warned[0] = True
            print(f"warning: no C kernel for the rank windows ({self.error}); using torch "
                  "instead (same bytes, slower)", file=sys.stderr)
