"""The rank windows' passes in C (``window.c``), over ``|x - base|`` in float32.

- :meth:`WindowPasses.tally`: the bracket round (:meth:`.rank_bracket.BracketTally.add`),
  with the positions of the entries it copies out when the tally notes them.
  The kernel computes the magnitudes itself, so the pass reads the two inputs once and
  writes almost nothing: on x86-64 with AVX2 about 0.5 ns per entry here, against some 2 ns
  for torch's digits and ``bincount`` (bench/RESULTS.md).
- :meth:`WindowPasses.count_equal` and :meth:`WindowPasses.equal_places`: how many entries
  of a chunk equal a window's boundary value, and where the k-th of them is.
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

    from mergekit_like.methods.rank_bracket import BracketTally

SOURCE = Path(__file__).with_name("window.c")
_I64x2, _U32x2, _PTRx2 = ctypes.c_int64 * 2, ctypes.c_uint32 * 2, ctypes.c_void_p * 2
_PTR, _I64 = ctypes.c_void_p, ctypes.c_int64


@dataclass(frozen=True)
class WindowPasses:
    """The loaded kernels, or why there are none (``error``). Safe from any thread."""

    lib: ctypes.CDLL | None
    error: str = ""
    avx2: bool = False

    @classmethod
    def open(cls) -> WindowPasses:
        """Build (or take from the cache) and load the kernels; never raises."""
        try:
            lib = load(SOURCE)
        except BuildError as exc:
            return cls(None, str(exc))
        lib.mk_bracket_init.argtypes = [ctypes.c_int]
        lib.mk_bracket_f32.argtypes = [_PTR, _PTR, _I64, ctypes.c_int, _U32x2, _U32x2, _I64x2,
                                       _I64x2, _PTRx2, _PTRx2, _I64x2, _I64x2, ctypes.c_int]
        lib.mk_count_equal_f32.argtypes = [_PTR, _PTR, _I64, ctypes.c_int, _PTR, _PTR]
        lib.mk_equal_places_f32.argtypes = [_PTR, _PTR, _I64, ctypes.c_uint32, ctypes.c_int,
                                            _PTR, _PTR]
        return cls(lib, avx2=bool(lib.mk_bracket_init(1)))

    def supports(self, x: torch.Tensor, base: torch.Tensor) -> bool:
        """Whether the kernels take these chunks: float32, on the CPU, contiguous."""
        import torch

        return (self.lib is not None and x.dtype == base.dtype == torch.float32
                and x.device.type == base.device.type == "cpu" and x.is_contiguous()
                and base.is_contiguous() and x.numel() == base.numel())

    def tally(self, tally: BracketTally, x: torch.Tensor, base: torch.Tensor) -> None:
        """``tally.add(bits(|x - base|))``, in one pass (see :meth:`supports`)."""
        import torch

        assert self.lib is not None and self.supports(x, base)
        n = len(tally.brackets)
        pad = [0] * (2 - n)
        below, at_lo = _I64x2(*tally.below, *pad), _I64x2(*tally.at_lo, *pad)
        inside = _I64x2(*tally.inside, *pad)
        cap = _I64x2(*(b.capacity for b in tally.brackets), *pad)
        out = _PTRx2(*(s.data_ptr() for s in tally.stored), *([None] * (2 - n)))
        places = _PTRx2(*(p.data_ptr() for p in tally.places or ()),
                        *([None] * (2 - len(tally.places or ()))))
        if tally.places is not None and x.numel() >= 1 << 31:
            raise ValueError("a bracket pass noting positions takes chunks under 2^31 entries")
        lo = _U32x2(*(b.lo for b in tally.brackets), *pad)
        hi = _U32x2(*(b.hi for b in tally.brackets), *pad)
        rc = self.lib.mk_bracket_f32(x.data_ptr(), base.data_ptr(), x.numel(), n, lo, hi,
                                     below, at_lo, out, places, inside, cap,
                                     torch.get_num_threads())
        if rc != 0:
            raise MemoryError("the bracket kernel could not allocate its buffers")
        tally.below[:] = below[:n]
        tally.at_lo[:] = at_lo[:n]
        tally.inside[:] = inside[:n]
        tally.seen += x.numel()
        tally.end_chunk()

    def count_equal(self, x: torch.Tensor, base: torch.Tensor,
                    values: Sequence[int]) -> list[int]:
        """How many entries' ``bits(|x - base|)`` equal each of ``values``."""
        assert self.lib is not None and self.supports(x, base)
        vals = (ctypes.c_uint32 * max(1, len(values)))(*values)
        counts = (ctypes.c_int64 * max(1, len(values)))()
        self.lib.mk_count_equal_f32(x.data_ptr(), base.data_ptr(), x.numel(), len(values),
                                    ctypes.addressof(vals), ctypes.addressof(counts))
        return list(counts[:len(values)])

    def equal_places(self, x: torch.Tensor, base: torch.Tensor, value: int,
                     ks: Sequence[int]) -> list[int]:
        """The flat position of the ``k``-th entry (0-based) whose ``bits(|x - base|)``
        equals ``value``, for each ``k`` of ``ks`` (ascending); ``numel`` past the last."""
        assert self.lib is not None and self.supports(x, base)
        want = (ctypes.c_int64 * max(1, len(ks)))(*ks)
        found = (ctypes.c_int64 * max(1, len(ks)))()
        self.lib.mk_equal_places_f32(x.data_ptr(), base.data_ptr(), x.numel(), value, len(ks),
                                     ctypes.addressof(want), ctypes.addressof(found))
        return list(found[:len(ks)])
