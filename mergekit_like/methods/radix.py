"""Magnitudes as ordered bit patterns, their 16-bit radix digits and histograms, and the
chunks of them that a rank window reads (:class:`MagnitudeChunk`).

Non-negative floats order as their bit patterns do, so a rank among magnitudes can be found
digit by digit over the patterns (:class:`~.rank_select.RankWindow`, the model-wide trims of
:mod:`mergekit_like.execute.global_trim`): 16 bits per round, a 65536-bin histogram each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.rank_bracket import BracketTally

DIGIT = 16
BINS = 1 << DIGIT


def magnitude_bits(mags: torch.Tensor) -> torch.Tensor:
    """Bit patterns of magnitudes (``x.abs()``) as non-negative integers in the same order.

    int32 for 16- and 32-bit floats (a view, no copy, for 32), int64 for float64. ``abs``
    clears the sign bit of NaN too, so NaN ranks above every number, as in ``torch.sort``.
    """
    import torch

    width = torch.finfo(mags.dtype).bits
    bits = mags.view({16: torch.int16, 32: torch.int32, 64: torch.int64}[width])
    return bits.to(torch.int32) if width == 16 else bits


def narrow_bits(mags: torch.Tensor, *values: int | None) -> torch.Tensor:
    """:func:`magnitude_bits` of ``mags`` for comparing with ``values`` only (``==``, ``<``,
    ``>=``; None: no value): for 16-bit floats the int16 view itself, without the int32
    copy, where every value fits in int16 (widening keeps every int16 value, so each
    comparison is the same)."""
    import torch

    if torch.finfo(mags.dtype).bits == 16 and all(
            v is None or -(1 << 15) <= v < 1 << 15 for v in values):
        return mags.view(torch.int16)
    return magnitude_bits(mags)


def counts(digits: torch.Tensor, bins: int) -> torch.Tensor:
    """How often each of ``bins`` values occurs among ``digits`` (int64)."""
    import torch

    hist = torch.zeros(bins, dtype=torch.int64, device=digits.device)
    add_counts(hist, digits)
    return hist


def add_counts(hist: torch.Tensor, digits: torch.Tensor) -> None:
    """Add how often each of ``hist``'s bins occurs among ``digits`` into ``hist`` (int64)."""
    import torch

    if digits.numel() >= hist.numel():
        hist.add_(torch.bincount(digits, minlength=hist.numel()))
    else:  # few entries: cost by entries, not by bins
        hist.index_add_(0, digits.long(), torch.ones_like(digits, dtype=torch.int64))


def radix_rounds(width: int) -> int:
    """Histogram rounds needed to pin a value of a ``width``-bit float (16 bits each)."""
    return width // DIGIT


def bit_digits(bits: torch.Tensor, shift: int, prefix: torch.Tensor | None = None,
               guesses: torch.Tensor | None = None) -> torch.Tensor:
    """The 16-bit digits at ``shift`` of non-negative ``bits``, as int32 (a radix round).

    ``prefix``: entries whose bits above the digit differ from it get ``BINS`` instead.
    ``guesses`` (a first round): entries whose digit equals ``guesses[k]`` get
    ``BINS * (k + 1)`` plus their next 16-bit digit instead, so that one histogram of
    ``BINS * (1 + len(guesses))`` bins also holds the next round's histogram of each
    guessed bin.
    """
    import torch

    digits = ((bits >> shift) & (BINS - 1)).to(torch.int32)
    if prefix is not None:
        return torch.where((bits >> (shift + DIGIT)) == prefix, digits, BINS)
    if guesses is not None:
        low = ((bits >> (shift - DIGIT)) & (BINS - 1)).to(torch.int32)
        for k in range(guesses.numel()):
            digits = torch.where(digits == guesses[k], low + BINS * (k + 1), digits)
    return digits


class MagnitudeChunk(Protocol):
    """A chunk of magnitudes as a :class:`~.rank_select.RankWindow` reads it, computed
    however the caller likes (from the magnitudes, or from two tensors whose difference
    they are)."""

    numel: int

    def digits(self, shift: int, prefix: int | None, guesses: tuple[int, ...]) -> torch.Tensor:
        """The chunk's :func:`bit_digits` (prefix and guesses as numbers; none: ``()``)."""

    def sample(self, count: int) -> torch.Tensor:
        """The bit patterns of about ``count`` entries spread evenly over the chunk (all
        of them when it has no more)."""

    def tally(self, tally: BracketTally) -> None:
        """``tally.add`` of the chunk's bit patterns."""

    def flat_bits(self) -> torch.Tensor:
        """The chunk's bit patterns (:func:`magnitude_bits`), flat."""


@dataclass(frozen=True)
class BitChunk:
    """A :class:`MagnitudeChunk` over bit patterns already computed (:func:`magnitude_bits`)."""

    bits: torch.Tensor

    @property
    def numel(self) -> int:  # noqa: D102
        return self.bits.numel()

    def digits(self, shift: int, prefix: int | None, guesses: tuple[int, ...]) -> torch.Tensor:
        import torch

        return bit_digits(self.bits, shift, None if prefix is None else torch.tensor(prefix),
                          torch.tensor(guesses, dtype=torch.int32) if guesses else None)

    def sample(self, count: int) -> torch.Tensor:
        flat = self.bits.reshape(-1)
        return flat[::max(1, flat.numel() // count)]

    def tally(self, tally: BracketTally) -> None:
        tally.add(self.bits)

    def flat_bits(self) -> torch.Tensor:
        return self.bits.reshape(-1)
