"""The merge pass (:func:`~mergekit_like.methods.passes.trim_mix`) in C, ``mix.c``, float32.

One loop over the chunk computes every model's task vector, trims it by its
:class:`~mergekit_like.methods.passes.Rule` (window, random draws, all, zero; scaled or
divided after), elects the signs and mixes, with the same float32 operations in the same
order as the eager torch code, so the bytes are the same (tests/native/test_mix.py).
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

    from mergekit_like.methods.passes import Consensus, Rule
    from mergekit_like.methods.reductions import BlockSums

SOURCE = Path(__file__).with_name("mix.c")
MAX_MODELS = 16
KINDS = {"all": 0, "zero": 1, "window": 2, "random": 3}
POSTS = {"none": 0, "scale": 1, "divide": 2}
CONSENSUS = {None: -1, "sum": 0, "count": 1, "sum_unweighted": 2}


class _Rule(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("post", ctypes.c_int32),
                ("has_lo", ctypes.c_int32), ("has_hi", ctypes.c_int32),
                ("n_spans", ctypes.c_int32), ("sign", ctypes.c_int32),
                ("lo", ctypes.c_uint32), ("hi", ctypes.c_uint32),
                ("span_value", ctypes.c_uint32 * 2), ("k0", ctypes.c_uint32),
                ("k1", ctypes.c_uint32), ("span_first", ctypes.c_int64 * 2),
                ("span_stop", ctypes.c_int64 * 2), ("start", ctypes.c_int64),
                ("p", ctypes.c_float), ("factor", ctypes.c_float), ("weight", ctypes.c_float)]


class _Mix(ctypes.Structure):
    _fields_ = [("models", ctypes.c_int32), ("consensus", ctypes.c_int32),
                ("normalize", ctypes.c_int32), ("all_positive", ctypes.c_int32),
                ("plain_divisor", ctypes.c_float), ("min_weight", ctypes.c_float),
                ("lambda_", ctypes.c_float), ("rules", _Rule * MAX_MODELS)]


@dataclass(frozen=True)
class MixPass:
    """The loaded kernel, or why there is none (``error``). Safe from any thread."""

    lib: ctypes.CDLL | None
    error: str = ""

    @classmethod
    def open(cls) -> MixPass:
        """Build (or take from the cache) and load the kernel; never raises."""
        try:
            lib = load(SOURCE)
        except BuildError as exc:
            return cls(None, str(exc))
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.mk_trim_mix_f32.argtypes = [ctypes.POINTER(_Mix), ptr, ptr, ptr, i64, ctypes.c_int]
        lib.mk_trim_norms_f32.argtypes = [ctypes.POINTER(_Rule), ptr, ptr, i64, i64, ptr, ptr,
                                          ctypes.c_int]
        lib.mk_trim_magnitudes_f32.argtypes = [ctypes.POINTER(_Rule), ptr, ptr, i64, i64, ptr,
                                               ptr]
        return cls(lib)

    def supports(self, xs: Sequence[torch.Tensor], base: torch.Tensor,
                 rules: Sequence[Rule]) -> bool:
        """Whether :meth:`trim_mix` takes these chunks and rules: float32 on the CPU,
        contiguous, at most 16 models, at most two spans a rule."""
        import torch

        return (self.lib is not None and 0 < len(xs) <= MAX_MODELS
                and all(x.dtype == torch.float32 and x.device.type == "cpu"
                        and x.is_contiguous() and x.numel() == base.numel()
                        for x in (*xs, base))
                and all(len(r.spans) <= 2 for r in rules))

    def trim_mix(self, xs: Sequence[torch.Tensor], base: torch.Tensor, rules: Sequence[Rule],
                 weights: Sequence[float], lambda_: float, consensus: Consensus | None,
                 normalize: bool) -> torch.Tensor:
        """:func:`mergekit_like.methods.passes.trim_mix` of flat chunks, for
        :meth:`mergekit_like.methods.kernels.Kernels.trim_mix` (see :meth:`supports`)."""
        import torch

        assert self.lib is not None and self.supports(xs, base, rules)
        w = torch.tensor(list(weights), dtype=torch.float32)
        total = w.sum()  # as mix_deltas divides without consensus
        spec = _Mix(models=len(xs), consensus=CONSENSUS[consensus], normalize=int(normalize),
                    all_positive=int(all(x > 0 for x in weights)),
                    plain_divisor=float(torch.where(total.abs() < 1e-8, torch.ones_like(total),
                                                    total)),
                    min_weight=float(w.min()), lambda_=lambda_)
        for i, (rule, weight) in enumerate(zip(rules, weights, strict=True)):
            _fill(spec.rules[i], rule, weight)
        out = torch.empty_like(base)
        pointers = (ctypes.c_void_p * len(xs))(*(x.data_ptr() for x in xs))
        rc = self.lib.mk_trim_mix_f32(ctypes.byref(spec), ctypes.addressof(pointers),
                                      base.data_ptr(), out.data_ptr(), base.numel(),
                                      torch.get_num_threads())
        if rc != 0:
            raise ValueError(f"the merge kernel refused its spec ({rc})")
        return out

    def trim_norms(self, x: torch.Tensor, base: torch.Tensor, rule: Rule,
                   sums: tuple[BlockSums, BlockSums]) -> None:
        """Add one model's chunk into the L1 norms' block sums (before and after trimming
        by ``rule``), as ``sums[k].add`` of
        :func:`mergekit_like.methods.passes.trim_magnitudes` would: whole blocks summed in C
        without keeping the magnitudes, the ends of the chunk that only part-fill a block
        through ``add``."""

        assert self.lib is not None and self.supports([x], base, [rule])
        spec = _Rule()
        _fill(spec, rule, 1.0)
        n = x.numel()
        head, blocks = n, 0  # a tensor of one block is summed by stable_sum directly
        if sums[0].numel > BLOCK:
            head = min(n, -sums[0].seen % BLOCK)  # the end of a block a chunk began
            blocks = (n - head) // BLOCK
        tail = head + blocks * BLOCK
        self._add_magnitudes(spec, x, base, 0, head, sums)
        if blocks:
            self._add_blocks(spec, x, base, head, blocks, sums)
        self._add_magnitudes(spec, x, base, tail, n - tail, sums)

    def _add_magnitudes(self, spec: _Rule, x: torch.Tensor, base: torch.Tensor, at: int,
                        count: int, sums: tuple[BlockSums, BlockSums]) -> None:
        import torch

        assert self.lib is not None
        if count:
            mags, kept = torch.empty(count), torch.empty(count)
            self.lib.mk_trim_magnitudes_f32(ctypes.byref(spec), x[at:].data_ptr(),
                                            base[at:].data_ptr(), at, count, mags.data_ptr(),
                                            kept.data_ptr())
            sums[0].add(mags)
            sums[1].add(kept)

    def _add_blocks(self, spec: _Rule, x: torch.Tensor, base: torch.Tensor, at: int,
                    blocks: int, sums: tuple[BlockSums, BlockSums]) -> None:
        import torch

        assert self.lib is not None
        mag_sums, kept_sums = torch.empty(blocks), torch.empty(blocks)
        self.lib.mk_trim_norms_f32(ctypes.byref(spec), x[at:].data_ptr(), base[at:].data_ptr(),
                                   at, blocks, mag_sums.data_ptr(), kept_sums.data_ptr(),
                                   torch.get_num_threads())
        sums[0].add_block_sums(mag_sums)
        sums[1].add_block_sums(kept_sums)


def _fill(r: _Rule, rule: Rule, weight: float) -> None:
    """The C struct of ``rule``, for a model of ``weight``."""
    r.kind, r.post = KINDS[rule.kind], POSTS[rule.post]
    r.has_lo, r.has_hi = rule.lo is not None, rule.hi is not None
    r.lo, r.hi = rule.lo or 0, rule.hi or 0
    r.n_spans = len(rule.spans)
    for k, (value, first, stop) in enumerate(rule.spans):
        r.span_value[k], r.span_first[k], r.span_stop[k] = value, first, stop
    r.k0, r.k1 = rule.key
    r.start, r.p, r.factor = rule.start, rule.p, rule.factor
    r.weight, r.sign = weight, (weight > 0) - (weight < 0)
