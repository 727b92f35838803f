"""Running the task-arithmetic family's passes (:mod:`.passes`): eagerly, fused, or in C.

Eagerly, each of a pass's operations reads and writes the whole chunk. The same functions
compiled by ``torch.compile`` (inductor) become one or two loops over the chunk, some ten
times faster on a CPU (bench/RESULTS.md). Compiled, in float32 on a CPU, the C kernels of
:mod:`mergekit_like.native` take over where they can: the merge pass and DARE's L1 rescale
(:mod:`~mergekit_like.native.mix`) and the rank windows' passes
(:mod:`~mergekit_like.native.window`, through :class:`PairChunk`).
:class:`Kernels` picks the way per pass; the bytes are the same every way. In half
precision (bfloat16, float16) the compiled code rounds every intermediate to it, as eager
torch does (inductor's ``emulate_precision_casts``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mergekit_like.methods.passes import (
    Consensus,
    Rule,
    count_equal,
    mix_deltas,
    radix_digits,
    rule_numbers,
    rule_shape,
    signs_of,
    trim_magnitudes,
    trim_mix,
)
from mergekit_like.methods.radix import magnitude_bits

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.rank_bracket import BracketTally
    from mergekit_like.methods.reductions import BlockSums
    from mergekit_like.native.mix import MixPass
    from mergekit_like.native.soup import SoupPass
    from mergekit_like.native.sphere import SpherePass
    from mergekit_like.native.window import WindowPasses

KernelMode = Literal["eager", "compiled"]


COMPILE_MIN_ENTRIES = 1 << 30
"""``auto`` compiles only for merges reading at least this many entries through the methods
whose passes run here (``MergeMethod.kernels``): below it, compiling (seconds to tens of
seconds on a first run) costs more than it saves."""


def choose_mode(requested: Literal["auto", "eager", "compiled"], device: str,
                entries: int) -> KernelMode:
    """The kernel mode of a run: ``requested``, with ``auto`` resolved.

    ``auto`` compiles on CPU when a C++ compiler is found and the merge reads at least
    :data:`COMPILE_MIN_ENTRIES` entries through these kernels; eagerly otherwise
    (GPUs run the eager passes fast). ``compiled`` on a GPU is a ValueError: triton's fused
    TIES kernel did not reproduce the eager bytes on an H100 (bench/RESULTS.md).
    """
    if requested == "compiled" and not device.startswith("cpu"):
        raise ValueError("compiled kernels run on the CPU only (on a GPU, triton's fused "
                         "kernels do not give the eager bytes); use auto or eager there")
    if requested != "auto":
        return requested
    if not device.startswith("cpu") or entries < COMPILE_MIN_ENTRIES:
        return "eager"
    import os
    import shutil

    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    return "compiled" if compiler else "eager"


@dataclass(frozen=True)
class Native:
    """The C kernels of a run: the rank windows' passes and the merge pass."""

    window: WindowPasses
    mix: MixPass


@dataclass(frozen=True)
class Kernels:
    """Runs this module's passes eagerly, or compiled by ``torch.compile`` (``mode``).

    A compiled pass is traced once per structure (number of models, rule kinds) and then
    reused for every chunk size (``dynamic=True``); the code is cached on disk by inductor,
    so a later run starts faster. ``native_kernels``: compiled, let the C kernels of
    :mod:`mergekit_like.native` take the passes they can (:meth:`native`).
    """

    mode: KernelMode = "eager"
    native_kernels: bool = True
    _compiled: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def fused(self, dtype: torch.dtype) -> bool:
        """Whether passes over tensors of ``dtype`` run compiled."""

        return self.mode == "compiled" and dtype.is_floating_point and dtype.itemsize >= 2

    def native(self) -> Native | None:
        """The C kernels (:mod:`mergekit_like.native`) when compiled and they build (else
        None, after one warning on stderr when compiled)."""
        if self.mode != "compiled" or not self.native_kernels:
            return None
        found = self._compiled.get("native")
        if found is None:
            import sys

            from mergekit_like.native.mix import MixPass
            from mergekit_like.native.window import WindowPasses

            found = self._compiled["native"] = Native(WindowPasses.open(), MixPass.open())
            libs = (found.window, found.mix)
            for error in sorted({lib.error for lib in libs} - {""}):
                print(f"warning: no C kernels ({error}); using torch instead (same bytes, "
                      "slower)", file=sys.stderr)
        return found if all(lib.lib is not None for lib in (found.window, found.mix)) else None

    def sphere(self) -> SpherePass | None:
        """The spherical methods' C kernels (:mod:`mergekit_like.native.sphere`) in every
        mode, as they give torch's bytes; None when ``native_kernels`` is off or they do
        not build (then torch's operations run: same bytes, slower)."""
        if not self.native_kernels:
            return None
        found = self._compiled.get("sphere")
        if found is None:
            from mergekit_like.native.sphere import SpherePass

            found = self._compiled["sphere"] = SpherePass.open()
        return found if found.lib is not None else None

    def soup(self) -> SoupPass | None:
        """The linear merge's C kernel (:mod:`mergekit_like.native.soup`) in every mode, as
        it gives torch's bytes; None when ``native_kernels`` is off or it is not usable
        here (then torch's operations run: same bytes, slower)."""
        if not self.native_kernels:
            return None
        found = self._compiled.get("soup")
        if found is None:
            from mergekit_like.native.soup import SoupPass

            found = self._compiled["soup"] = SoupPass.open()
        return found if found.lib is not None else None

    def magnitudes(self, x: torch.Tensor, base: torch.Tensor) -> PairChunk:
        """The rank window's view of ``|x - base|`` for one chunk (flat tensors)."""
        return PairChunk(x.reshape(-1), base.reshape(-1), self)

    def _get(self, fn: Callable[..., Any], dtype: torch.dtype) -> Callable[..., Any]:
        if not self.fused(dtype):
            return fn
        compiled = self._compiled.get(fn.__name__)
        if compiled is None:
            compiled = self._compiled[fn.__name__] = self._compile(fn)
        return compiled

    def _compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` compiled; should compiling fail (no working C++ toolchain), ``fn`` itself
        from then on, with one warning: the bytes are the same, only slower."""
        import sys

        import torch

        # in this process: no pool of compile workers, each as large as a merge; half
        # precision rounded after every operation, as eager torch does
        compiled = torch.compile(fn, dynamic=True, options={
            "compile_threads": 1, "emulate_precision_casts": True})

        def run(*args: Any) -> Any:
            if self._compiled.get(fn.__name__) is fn:
                return fn(*args)
            try:
                return compiled(*args)
            except Exception as exc:
                if not type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise
                self._compiled[fn.__name__] = fn
                print(f"warning: compiling the merge kernels failed ({type(exc).__name__}); "
                      "merging with eager torch instead (same bytes, slower)", file=sys.stderr)
                return fn(*args)

        return run

    def trim_mix(self, xs: Sequence[torch.Tensor], base: torch.Tensor, rules: Sequence[Rule],
                 weights: Sequence[float], lambda_: float, consensus: Consensus | None,
                 normalize: bool) -> torch.Tensor:
        """:func:`trim_mix` with each model's :class:`Rule`."""
        import torch

        native = self.native()
        if native is not None and native.mix.supports(xs, base, rules):
            return native.mix.trim_mix([x.reshape(-1) for x in xs], base.reshape(-1), rules,
                                       weights, lambda_, consensus,
                                       normalize).view(base.shape)
        shape = tuple(rule_shape(r, pad=self.fused(base.dtype)) for r in rules)
        numbers = rule_numbers(rules, base.dtype, base.device)
        w = torch.tensor(list(weights), dtype=base.dtype, device=base.device)
        lam = torch.tensor(lambda_, dtype=_opmath(base.dtype), device=base.device)
        fn = self._get(trim_mix, base.dtype)
        return fn([x.reshape(-1) for x in xs], base.reshape(-1), shape, numbers, w,
                  signs_of(weights), lam, consensus, normalize).view(base.shape)

    def trim_magnitudes(self, x: torch.Tensor, base: torch.Tensor,
                        rule: Rule) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`trim_magnitudes` of one model's chunk."""
        shape = rule_shape(rule, pad=self.fused(base.dtype))
        numbers = rule_numbers([rule], base.dtype, base.device)
        return self._get(trim_magnitudes, base.dtype)(x.reshape(-1), base.reshape(-1), shape,
                                                      numbers)

    def trim_norms(self, x: torch.Tensor, base: torch.Tensor, rule: Rule,
                   sums: tuple[BlockSums, BlockSums]) -> None:
        """Add one model's chunk into the L1 norms' sums before and after trimming by
        ``rule`` (:func:`trim_magnitudes`, then ``sums[k].add``)."""
        native = self.native()
        if native is not None and native.mix.supports([x], base, [rule]):
            native.mix.trim_norms(x.reshape(-1), base.reshape(-1), rule, sums)
            return
        mags, kept = self.trim_magnitudes(x, base, rule)
        sums[0].add(mags)
        sums[1].add(kept)

    def mix_deltas(self, deltas: Sequence[torch.Tensor], base: torch.Tensor,
                   weights: Sequence[float], lambda_: float | torch.Tensor,
                   consensus: Consensus | None, normalize: bool) -> torch.Tensor:
        """:func:`mix_deltas` with the weights (and a scalar lambda) as numbers."""
        import torch

        w = torch.tensor(list(weights), dtype=base.dtype, device=base.device)
        lam = (lambda_ if isinstance(lambda_, torch.Tensor)
               else torch.tensor(float(lambda_), dtype=_opmath(base.dtype), device=base.device))
        fn = self._get(mix_deltas, base.dtype) if lam.dim() == 0 else mix_deltas
        return fn(deltas, base, w, signs_of(weights), lam, consensus, normalize)

    def radix_digits(self, x: torch.Tensor, base: torch.Tensor, shift: int,
                     prefix: int | None, guesses: tuple[int, ...]) -> torch.Tensor:
        """:func:`~.passes.radix_digits` of flat tensors (for :meth:`PairChunk.digits`)."""
        import torch

        bits = torch.int64 if base.dtype == torch.float64 else torch.int32
        pre = None if prefix is None else torch.tensor(prefix, dtype=bits, device=base.device)
        guess = (torch.tensor(guesses, dtype=torch.int32, device=base.device) if guesses
                 else None)
        return self._get(radix_digits, base.dtype)(x.reshape(-1), base.reshape(-1), shift,
                                                   pre, guess)

    def count_equal(self, xs: Sequence[torch.Tensor], base: torch.Tensor,
                    values: Sequence[Sequence[int]]) -> list[list[int]]:
        """:func:`count_equal`, per model a list of counts."""
        import torch

        native = self.native()
        if native is not None and all(native.window.supports(x, base) for x in xs):
            return [native.window.count_equal(x.reshape(-1), base.reshape(-1), v) if v else []
                    for x, v in zip(xs, values, strict=True)]
        bits = torch.int64 if base.dtype == torch.float64 else torch.int32
        if base.dtype.itemsize == 2 and all(0 <= x < 1 << 15 for v in values for x in v):
            bits = torch.int16  # compared with the 16-bit patterns themselves: no int32 copy
        vals = [torch.tensor(list(v), dtype=bits, device=base.device) for v in values]
        found = self._get(count_equal, base.dtype)(
            [x.reshape(-1) for x in xs], base.reshape(-1), vals)
        flat = torch.stack(found).tolist() if found else []
        out, at = [], 0
        for v in values:
            out.append(flat[at:at + len(v)])
            at += len(v)
        return out


@dataclass(frozen=True)
class PairChunk:
    """A :class:`~.radix.MagnitudeChunk` of ``|x - base|``, computed by the kernels
    from the two flat chunks as each round needs it."""

    x: torch.Tensor
    base: torch.Tensor
    kernels: Kernels

    @property
    def numel(self) -> int:
        """Entries in the chunk."""
        return self.x.numel()

    def digits(self, shift: int, prefix: int | None, guesses: tuple[int, ...]) -> torch.Tensor:
        """:meth:`Kernels.radix_digits` of the chunk."""
        return self.kernels.radix_digits(self.x, self.base, shift, prefix, guesses)

    def sample(self, count: int) -> torch.Tensor:
        """Bit patterns of every ``numel // count``-th entry."""
        step = max(1, self.x.numel() // count)
        return magnitude_bits((self.x[::step] - self.base[::step]).abs_())

    def flat_bits(self) -> torch.Tensor:
        """The chunk's magnitude bit patterns (for a tie replay round)."""
        return magnitude_bits((self.x - self.base).abs_())

    def tally(self, tally: BracketTally) -> None:
        """The bracket round's pass: in C where it can, else in torch."""
        native = self.kernels.native()
        if native is not None and native.window.supports(self.x, self.base):
            native.window.tally(tally, self.x, self.base)
        else:
            tally.add(magnitude_bits((self.x - self.base).abs_()))

    def equal_places(self, value: int, ks: Sequence[int]) -> list[int]:
        """The chunk's flat position of the ``k``-th entry (0-based) whose magnitude bits
        equal ``value``, for each ``k`` of ``ks`` (ascending; each below their count)."""

        native = self.kernels.native()
        if native is not None and native.window.supports(self.x, self.base):
            return native.window.equal_places(self.x, self.base, value, ks)
        where = (magnitude_bits((self.x - self.base).abs_()) == value).nonzero().squeeze(1)
        return [int(where[k]) for k in ks]


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype a Python number multiplies ``dtype`` tensors in (torch's opmath)."""
    import torch

    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
