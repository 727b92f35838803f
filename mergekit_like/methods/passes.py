"""The task-arithmetic family's passes, each one pure torch function of a chunk.

A TIES merge of one chunk is some forty elementwise torch operations: task vectors, their
magnitudes, masks, the sign election, the disjoint sum. Each pass is written once, here:
:func:`mix_deltas` (weighting, sign election, disjoint sum, normalisation), :func:`trim_mix`
(task vectors trimmed by a per-chunk :class:`Rule`, then mixed), :func:`trim_magnitudes`
(the L1 rescale's norms), :func:`radix_digits` and :func:`count_equal` (the statistics of a
magnitude trim). :class:`~mergekit_like.methods.kernels.Kernels` runs them eagerly, fused
by ``torch.compile``, or hands them to the C kernels of :mod:`mergekit_like.native`, which
do the same operations in the same order. Every operation is an IEEE operation on float32
or float64 (no contraction into fused multiply-adds, no reassociated sums), so every way
gives the same bytes; the tests check this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mergekit_like.methods.draws import counter_uniforms
from mergekit_like.methods.radix import bit_digits, magnitude_bits

if TYPE_CHECKING:
    import torch

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

    Rounding follows mergekit's torch ops: each ``w_i * d_i`` is rounded to the compute
    dtype, the sums over the models are ``torch.sum(dim=0)``'s (in bfloat16/float16
    accumulated in float32, rounded once), and ``lambda_`` (float32 for those dtypes, as
    torch's opmath takes a Python number) multiplies in float32 before one rounding.
    """
    import torch

    dtype = base.dtype
    acc = _accumulator(dtype)
    if consensus is None:
        mixed = deltas[0].mul_(weights[0]).to(acc)
        for i in range(1, len(deltas)):
            mixed.add_(deltas[i].mul_(weights[i]))
        mixed = mixed.to(dtype)
        if normalize:
            total = weights.sum()
            mixed.div_(torch.where(total.abs() < 1e-8, torch.ones_like(total), total))
        return _scaled(mixed, lambda_).add_(base)
    total = torch.zeros_like(base, dtype=acc)
    for i, d in enumerate(deltas):
        if consensus == "sum":
            total.add_(d * weights[i])
        elif consensus == "sum_unweighted":
            total.add_(d)
        elif signs[i] > 0:  # count: the signs of the weighted task vectors
            total.add_(torch.sign(d))
        elif signs[i] < 0:
            total.sub_(torch.sign(d))
    elected = torch.ones_like(total).copysign_(total).to(dtype)
    mixed = divisor = None
    for i, d in enumerate(deltas):
        agrees = d * elected
        agree = (agrees > 0) if signs[i] >= 0 else (agrees < 0)
        term = d.mul_(agree).mul_(weights[i])
        mixed = term.to(acc) if mixed is None else mixed.add_(term)
        if normalize:
            share = agree.to(d.dtype).mul_(weights[i])
            divisor = share.to(acc) if divisor is None else divisor.add_(share)
    assert mixed is not None
    mixed = mixed.to(dtype)
    if divisor is not None:  # no agreeing model: mixed is 0 there, divided as said above
        divisor = divisor.to(dtype)
        if all(sign > 0 for sign in signs):
            divisor = torch.maximum(divisor, weights.min())
        else:
            divisor.masked_fill_(divisor == 0, 1.0)
        mixed.div_(divisor)
    return _scaled(mixed, lambda_).add_(base)


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """The dtype torch's sums (and opmath) use for ``dtype``: float32 for 16-bit floats."""
    import torch

    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _scaled(mixed: torch.Tensor, lambda_: torch.Tensor) -> torch.Tensor:
    """``mixed * lambda_`` in ``lambda_``'s dtype when wider (one rounding), else in place."""
    if lambda_.dtype == mixed.dtype:
        return mixed.mul_(lambda_)
    return mixed.to(lambda_.dtype).mul_(lambda_).to(mixed.dtype)


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
    """:func:`~.radix.bit_digits` of ``bits(|x - base|)``."""
    return bit_digits(magnitude_bits((x - base).abs_()), shift, prefix, guesses)


def count_equal(xs: Sequence[torch.Tensor], base: torch.Tensor,
                values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """How many entries of each ``bits(|x_i - base|)`` equal each of ``values[i]`` (a 1-D
    integer tensor per model): per model and value, a 0-d tensor."""
    import torch

    found = []
    for x, vals in zip(xs, values, strict=True):
        mags = (x - base).abs_()  # int16 values: 16-bit magnitudes compared in place
        bits = mags.view(torch.int16) if vals.dtype == torch.int16 else magnitude_bits(mags)
        found.extend(torch.count_nonzero(bits == vals[j]) for j in range(vals.numel()))
    return found
