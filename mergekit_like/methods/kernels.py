"""The task-arithmetic family's passes as single torch functions, run eagerly or fused.

A TIES merge of one chunk is some forty elementwise torch operations: task vectors, their
magnitudes, masks, the sign election, the disjoint sum. Eagerly, each one reads and writes
the whole chunk. The same functions compiled by ``torch.compile`` (inductor) become one or
two loops over the chunk, some ten times faster on a CPU (bench/RESULTS.md).

Each pass is written once, here, as a pure function of tensors: :func:`mix_deltas` (weighting,
sign election, disjoint sum, normalisation), :func:`trim_mix` (task vectors trimmed by a
per-chunk :class:`Rule`, then mixed), :func:`radix_digits` and :func:`count_equal` (the
statistics of a magnitude trim). :class:`Kernels` runs them either way. Compiled, in
float32 on a CPU, the C kernels of :mod:`mergekit_like.native` take over where they can: the
merge pass (:mod:`~mergekit_like.native.mix`), and the rank windows' passes
(:mod:`~mergekit_like.native.window`, through :class:`PairChunk`). Every operation is an
IEEE operation on float32 or float64 (no contraction into fused multiply-adds, no
reassociated sums), so a compiled kernel gives the same bytes as the eager one; the tests
check this. In half precision (bfloat16, float16) the compiled code rounds every
intermediate to it, as eager torch does (inductor's ``emulate_precision_casts``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mergekit_like.methods.draws import counter_uniforms
from mergekit_like.methods.rank_select import bit_digits, magnitude_bits

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.rank_bracket import BracketTally
    from mergekit_like.methods.reductions import BlockSums
    from mergekit_like.native.mix import MixPass
    from mergekit_like.native.window import WindowPasses

KernelMode = Literal["eager", "compiled"]
Consensus = Literal["sum", "count", "sum_unweighted"]
RuleKind = Literal["all", "zero", "window", "random"]
RulePost = Literal["none", "scale", "divide"]


@dataclass(frozen=True)
class Rule:
    """How one model's task vector is trimmed in one chunk.

    ``kind``: ``"all"`` keeps every entry, ``"zero"`` none (exact zeros), ``"window"`` the
    entries with ``lo <= bits(|d|) < hi`` (either bound may be None: unbounded) and, for
    each ``(value, first, stop)`` of ``spans``, those with ``bits(|d|) == value`` at flat
    positions ``first <= i < stop`` of the chunk (where a rank window's edge falls among
    equal magnitudes); ``"random"`` those whose draw is below ``p`` (the draws of
    :class:`~.draws.Draws` with ``key``, for the chunk starting at flat index ``start``).
    ``post``: then multiply by ``factor`` (``"scale"``, an L1 rescale) or divide by ``p``
    (``"divide"``, rescaling by keep probability).
    """

    kind: RuleKind
    lo: int | None = None
    hi: int | None = None
    p: float = 1.0
    factor: float = 1.0
    post: RulePost = "none"
    spans: tuple[tuple[int, int, int], ...] = ()
    key: tuple[int, int] = (0, 0)
    start: int = 0


def mix_deltas(deltas: Sequence[torch.Tensor], base: torch.Tensor, weights: torch.Tensor,
               signs: tuple[int, ...], lambda_: torch.Tensor, consensus: Consensus | None,
               normalize: bool) -> torch.Tensor:
    """``base + lambda * mixed`` of (trimmed) task vectors; see :mod:`.task_arithmetic`.

    ``weights``: one per model, in the compute dtype; ``signs``: their signs (1, 0 or -1).
    Without ``consensus`` every entry is mixed: ``sum_i w_i d_i``, divided by ``sum_i w_i``
    with ``normalize`` (by 1 when that sum is below 1e-8 in magnitude). With it, the sign of
    each entry is elected (ties go to +1, entries where every task vector is zero to -1,
    by ``copysign``) and only the task vectors agreeing with it are summed, divided with
    ``normalize`` by the sum of the agreeing weights (where none agrees: by the smallest
    weight when every weight is positive, else by 1). The task vectors are updated in place.
    """
    import torch

    if consensus is None:
        mixed = deltas[0].mul_(weights[0])
        for i in range(1, len(deltas)):
            mixed.add_(deltas[i].mul_(weights[i]))
        if normalize:
            total = weights.sum()
            mixed.div_(torch.where(total.abs() < 1e-8, torch.ones_like(total), total))
        return mixed.mul_(lambda_).add_(base)
    total = torch.zeros_like(base)
    for i, d in enumerate(deltas):
        if consensus == "sum":
            total.add_(d * weights[i])
        elif consensus == "sum_unweighted":
            total.add_(d)
        elif signs[i] > 0:  # count: the signs of the weighted task vectors
            total.add_(torch.sign(d))
        elif signs[i] < 0:
            total.sub_(torch.sign(d))
    elected = torch.ones_like(total).copysign_(total)
    mixed = divisor = None
    for i, d in enumerate(deltas):
        agrees = d * elected
        agree = (agrees > 0) if signs[i] >= 0 else (agrees < 0)
        term = d.mul_(agree).mul_(weights[i])
        mixed = term if mixed is None else mixed.add_(term)
        if normalize:
            share = agree.to(d.dtype).mul_(weights[i])
            divisor = share if divisor is None else divisor.add_(share)
    assert mixed is not None
    if divisor is not None:  # no agreeing model: mixed is 0 there, divided as said above
        if all(sign > 0 for sign in signs):
            divisor = torch.maximum(divisor, weights.min())
        else:
            divisor.masked_fill_(divisor == 0, 1.0)
        mixed.div_(divisor)
    return mixed.mul_(lambda_).add_(base)


def trimmed(d: torch.Tensor, kind: RuleKind, post: RulePost, has_lo: bool, has_hi: bool,
            n_spans: int, bounds: torch.Tensor, span_values: torch.Tensor,
            span_places: torch.Tensor, p: torch.Tensor, factor: torch.Tensor,
            key: torch.Tensor) -> torch.Tensor:
    """One flat task vector trimmed by a rule (:class:`Rule`): its thresholds in ``bounds``
    (2), its spans' values in ``span_values`` (2) and their positions in ``span_places``
    (2, 2), its draws' key and first index in ``key`` (3)."""
    import torch

    if kind == "zero":
        return d.zero_()
    if kind == "window":
        bits = magnitude_bits(d.abs())
        keep = None
        if has_lo:
            keep = bits >= bounds[0]
        if has_hi:
            below = bits < bounds[1]
            keep = below if keep is None else keep.logical_and_(below)
        if n_spans:
            where = torch.arange(d.numel(), device=d.device)
            for k in range(n_spans):
                span = ((bits == span_values[k]) & (where >= span_places[k, 0])
                        & (where < span_places[k, 1]))
                keep = span if keep is None else keep.logical_or_(span)
        if keep is not None:
            d.mul_(keep)
    elif kind == "random":
        index = torch.arange(d.numel(), device=d.device).add_(key[2])
        d.mul_(counter_uniforms(index, key[0], key[1]) < p)
    if post == "scale":
        d.mul_(factor)
    elif post == "divide":  # by a tensor: CUDA divides by a Python number as x * (1 / p)
        d.div_(torch.full((), p, dtype=d.dtype, device=d.device))
    return d


def trim_mix(xs: Sequence[torch.Tensor], base: torch.Tensor, shape: tuple[RuleShape, ...],
             numbers: RuleNumbers, weights: torch.Tensor, signs: tuple[int, ...],
             lambda_: torch.Tensor, consensus: Consensus | None,
             normalize: bool) -> torch.Tensor:
    """:func:`mix_deltas` of the flat task vectors ``x_i - base``, each trimmed by its rule.

    ``shape``: per model, the static part of its :class:`Rule` (:func:`rule_shape`);
    ``numbers``: the rules' numbers as tensors (:func:`rule_numbers`).
    """
    deltas = [trimmed(x - base, *shape[i], *(n[i] for n in numbers)) for i, x in enumerate(xs)]
    return mix_deltas(deltas, base, weights, signs, lambda_, consensus, normalize)


def trim_magnitudes(x: torch.Tensor, base: torch.Tensor, shape: RuleShape,
                    numbers: RuleNumbers) -> tuple[torch.Tensor, torch.Tensor]:
    """``|x - base|`` and its trimmed version (one model, numbers of one rule): the L1
    norms before and after trimming."""
    d = x - base
    return d.abs(), trimmed(d, *shape, *(n[0] for n in numbers)).abs_()


def signs_of(weights: Sequence[float]) -> tuple[int, ...]:
    """Each weight's sign: 1, 0 or -1."""
    return tuple((w > 0) - (w < 0) for w in weights)


RuleShape = tuple[RuleKind, RulePost, bool, bool, int]
RuleNumbers = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor",
                    "torch.Tensor", "torch.Tensor"]


def rule_shape(rule: Rule, pad: bool = False) -> RuleShape:
    """The static part of ``rule``: kind, post, whether it has each bound, its spans.

    ``pad``: a window always has two spans (the missing ones empty), so that compiled code
    is traced once for all the chunks of a tensor, with the same bytes.
    """
    spans = 2 if pad and rule.kind == "window" else len(rule.spans)
    return rule.kind, rule.post, rule.lo is not None, rule.hi is not None, spans


def rule_numbers(rules: Sequence[Rule], dtype: torch.dtype,
                 device: torch.device | str) -> RuleNumbers:
    """The numbers of ``rules`` as tensors: bounds (n, 2) and span values (n, 2) as
    magnitude bits, span positions (n, 2, 2), ``p`` and factors (n) in ``dtype``, draw keys
    and first indices (n, 3)."""
    import torch

    bits = torch.int64 if dtype == torch.float64 else torch.int32
    spans = [[*r.spans, *[(0, 0, 0)] * (2 - len(r.spans))] for r in rules]
    return (torch.tensor([[r.lo or 0, r.hi or 0] for r in rules], dtype=bits, device=device),
            torch.tensor([[v for v, _, _ in s] for s in spans], dtype=bits, device=device),
            torch.tensor([[[a, b] for _, a, b in s] for s in spans], dtype=torch.int64,
                         device=device),
            torch.tensor([r.p for r in rules], dtype=dtype, device=device),
            torch.tensor([r.factor for r in rules], dtype=dtype, device=device),
            torch.tensor([[*r.key, r.start] for r in rules], dtype=torch.int64, device=device))


def apply_rule(d: torch.Tensor, rule: Rule) -> torch.Tensor:
    """One task vector trimmed by ``rule``, eagerly (as :func:`trim_mix` does it)."""
    numbers = rule_numbers([rule], d.dtype, d.device)
    return trimmed(d.reshape(-1), *rule_shape(rule), *(n[0] for n in numbers)).view(d.shape)


def radix_digits(x: torch.Tensor, base: torch.Tensor, shift: int, prefix: torch.Tensor | None,
                 guesses: torch.Tensor | None) -> torch.Tensor:
    """:func:`~.rank_select.bit_digits` of ``bits(|x - base|)``."""
    return bit_digits(magnitude_bits((x - base).abs_()), shift, prefix, guesses)


def count_equal(xs: Sequence[torch.Tensor], base: torch.Tensor,
                values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """How many entries of each ``bits(|x_i - base|)`` equal each of ``values[i]`` (a 1-D
    integer tensor per model): per model and value, a 0-d tensor."""
    import torch

    found = []
    for x, vals in zip(xs, values, strict=True):
        bits = magnitude_bits((x - base).abs_())
        found.extend(torch.count_nonzero(bits == vals[j]) for j in range(vals.numel()))
    return found


COMPILE_MIN_ENTRIES = 1 << 30
"""``auto`` compiles only for merges reading at least this many entries through the family's
passes: below it, compiling (seconds to tens of seconds on a first run) costs more than it
saves."""


def choose_mode(requested: Literal["auto", "eager", "compiled"], device: str,
                entries: int) -> KernelMode:
    """The kernel mode of a run: ``requested``, with ``auto`` resolved.

    ``auto`` compiles on CPU when a C++ compiler is found and the merge reads at least
    :data:`COMPILE_MIN_ENTRIES` entries through the family's passes; eagerly otherwise
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
            for error in sorted({found.window.error, found.mix.error} - {""}):
                print(f"warning: no C kernels ({error}); using torch instead (same bytes, "
                      "slower)", file=sys.stderr)
        return found if found.window.lib is not None and found.mix.lib is not None else None

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
        lam = torch.tensor(lambda_, dtype=base.dtype, device=base.device)
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
               else torch.tensor(float(lambda_), dtype=base.dtype, device=base.device))
        fn = self._get(mix_deltas, base.dtype) if lam.dim() == 0 else mix_deltas
        return fn(deltas, base, w, signs_of(weights), lam, consensus, normalize)

    def radix_digits(self, x: torch.Tensor, base: torch.Tensor, shift: int,
                     prefix: int | None, guesses: tuple[int, ...]) -> torch.Tensor:
        """:func:`radix_digits` of flat tensors (a :data:`~.rank_select.Digits`)."""
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
    """A :class:`~.rank_select.MagnitudeChunk` of ``|x - base|``, computed by the kernels
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
