"""Running statistics of K task vectors, accumulated one tensor at a time.

A task vector is an ingredient minus the base model. For a group of tensors (the whole
model, one layer, one kind of tensor) :class:`GroupStats` keeps, in float64 and integer
counts only (never the vectors themselves):

- ``dots[i][j]``: the dot product of task vectors i and j over the group (so
  ``sqrt(dots[i][i])`` is i's norm and ``dots[i][j] / (norm_i * norm_j)`` their cosine);
- per trim density d, after TIES's trim (each task vector keeps, per tensor, its
  ``max(1, int(d * n))`` entries of largest magnitude, of equal magnitudes at the cut the
  first in position; the rest become 0):

  - ``overlap``: entries where at least two trimmed task vectors are nonzero;
  - ``conflict``: those of them where the nonzero values do not all have the same sign.
    **Sign conflict fraction** = conflict / overlap;
  - ``kept``: nonzero trimmed values, counted over (model, entry) pairs;
  - ``against``: kept values whose sign differs from the entry's elected sign, the sign of
    the sum of the trimmed values (a sum of exactly 0 elects +, as mergekit's TIES does).
    **TIES disagreement fraction** = against / kept: the share of kept values that
    TIES's disjoint mean drops;
  - ``pair_both[i][j]`` / ``pair_opposite[i][j]``: entries where trimmed i and j are both
    nonzero, and those where their signs are opposite (pairwise conflict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: the definitions, as the Markdown report states them
DEFINITIONS = (
    "Each task vector (ingredient minus base) is trimmed per tensor as TIES trims: it keeps "
    "its max(1, int(density * n)) entries of largest magnitude (of equal magnitudes at the "
    "cut, the first in the tensor's order), the rest become 0.",
    "",
    "- *conflict*: among entries where at least two trimmed task vectors are nonzero, the "
    "fraction where their signs are not all the same.",
    "- *TIES disagree*: among nonzero trimmed values (over models and entries), the fraction "
    "whose sign differs from the elected sign (the sign of the entry's sum of trimmed values; "
    "a zero sum elects +): the share that TIES's disjoint mean drops.",
)
_CHUNK = 1 << 18  # entries counted at a time (small enough to stay in cache)


@dataclass
class DensityCounts:
    """Sign counts of one group at one trim density (see the module docstring)."""

    k: int
    overlap: int = 0
    conflict: int = 0
    kept: int = 0
    against: int = 0
    pair_both: np.ndarray = field(init=False)
    pair_opposite: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.pair_both = np.zeros((self.k, self.k), dtype=np.int64)
        self.pair_opposite = np.zeros((self.k, self.k), dtype=np.int64)

    def add(self, other: DensityCounts) -> None:
        """Add another tensor's counts."""
        self.overlap += other.overlap
        self.conflict += other.conflict
        self.kept += other.kept
        self.against += other.against
        self.pair_both += other.pair_both
        self.pair_opposite += other.pair_opposite

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts and fractions (None where nothing was counted)."""
        both = self.pair_both.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            pair = np.where(both > 0, self.pair_opposite / np.maximum(both, 1), np.nan)
        return {
            "sign_conflict": _frac(self.conflict, self.overlap),
            "ties_disagreement": _frac(self.against, self.kept),
            "overlap": self.overlap,
            "conflict": self.conflict,
            "kept": self.kept,
            "against_elected": self.against,
            "pairwise_sign_conflict": [
                [None if np.isnan(x) else float(x) for x in row] for row in pair
            ],
        }


def _frac(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


@dataclass
class GroupStats:
    """Dot products and sign counts of K task vectors over a group of tensors."""

    k: int
    densities: tuple[float, ...]
    numel: int = 0
    tensors: int = 0
    dots: np.ndarray = field(init=False)
    counts: dict[float, DensityCounts] = field(init=False)

    def __post_init__(self) -> None:
        self.dots = np.zeros((self.k, self.k), dtype=np.float64)
        self.counts = {d: DensityCounts(self.k) for d in self.densities}

    def add(self, other: GroupStats) -> None:
        """Add another group's (or one tensor's) statistics."""
        self.numel += other.numel
        self.tensors += other.tensors
        self.dots += other.dots
        for d, c in other.counts.items():
            self.counts[d].add(c)

    def norms(self) -> np.ndarray:
        """Each task vector's L2 norm over the group."""
        return np.sqrt(np.maximum(np.diag(self.dots), 0.0))

    def cosines(self) -> np.ndarray:
        """Pairwise cosine similarities (NaN where a task vector is zero)."""
        n = self.norms()
        outer = np.outer(n, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(outer > 0, self.dots / np.where(outer > 0, outer, 1.0), np.nan)
        np.fill_diagonal(cos, np.where(n > 0, 1.0, np.nan))  # exact, not 1 - rounding
        return np.clip(cos, -1.0, 1.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready norms, cosines, angles (degrees) and sign statistics."""
        cos = self.cosines()
        angles = np.degrees(np.arccos(cos))
        iu = np.triu_indices(self.k, 1)
        mean_cos = (
            float(np.nanmean(cos[iu])) if iu[0].size and not np.isnan(cos[iu]).all() else None
        )
        return {
            "tensors": self.tensors,
            "parameters": self.numel,
            "norms": [float(x) for x in self.norms()],
            "cosine": _matrix(cos),
            "angle_degrees": _matrix(angles),
            "mean_pairwise_cosine": mean_cos,
            "densities": {f"{d:g}": c.as_dict() for d, c in self.counts.items()},
        }


def _matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(x) else float(x) for x in row] for row in m]


def keep_levels(deltas: torch.Tensor, densities: tuple[float, ...]) -> torch.Tensor:
    """For K flat task vectors (K x n), the index of the smallest density (of ``densities``,
    ascending) whose TIES trim keeps each entry, ``len(densities)`` where none does (int8).

    The trim at density d keeps a vector's ``max(1, int(d * n))`` entries of largest
    magnitude (all at d = 1); of equal magnitudes at the cut, those first in position are
    kept, so the trims are nested and do not depend on the sorting algorithm. Each trim
    searches only the entries the next larger one kept."""
    import torch

    k, n = deltas.shape
    levels = torch.full((k, n), len(densities), dtype=torch.int8)
    for i in range(k):
        places: torch.Tensor | None = None  # positions of the entries still in the running
        mags = deltas[i].abs()
        for j in range(len(densities) - 1, -1, -1):
            if densities[j] >= 1.0 or n == 0:
                levels[i].fill_(j)
                continue
            kept = _top(mags, max(1, int(densities[j] * n)))
            places = kept if places is None else places[kept]
            mags = mags[kept]
            levels[i, places] = j
    return levels


def _top(mags: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions (ascending) of the ``keep`` largest of ``mags``; of equal values at the
    cut, the first in position."""
    import torch

    if keep >= mags.numel():
        return torch.arange(mags.numel())
    cut = torch.kthvalue(mags, mags.numel() - keep + 1).values  # the keep-th largest
    chosen = mags > cut
    room = keep - int(torch.count_nonzero(chosen))
    at_cut = torch.nonzero(mags == cut).reshape(-1)  # ascending
    chosen[at_cut[:room]] = True
    return torch.nonzero(chosen).reshape(-1)


def trim_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's trim of one flat task vector: True at its ``max(1, int(density * n))`` entries
    of largest magnitude (all of them at density 1); of equal magnitudes at the cut, the
    first in position."""
    import torch

    n = delta.numel()
    mask = torch.ones(n, dtype=torch.bool)
    if density < 1.0 and n > 0:
        mask.fill_(False)
        mask[_top(delta.abs(), max(1, int(density * n)))] = True
    return mask


MAX_MODELS = 12  # the joint sign histogram has 2 * 3**K bins


def tensor_stats(deltas: torch.Tensor, densities: tuple[float, ...]) -> GroupStats:
    """The statistics of one tensor's K task vectors ``deltas`` (K x n, float64);
    ``densities`` ascending."""
    import torch

    k = deltas.shape[0]
    out = GroupStats(k, densities, numel=deltas.shape[1], tensors=1)
    out.dots = (deltas @ deltas.T).numpy()
    levels = keep_levels(deltas, densities)
    powers = _powers(k)[:, None]
    hists = np.zeros((len(densities), 2 * 3**k), dtype=np.int64)
    for start in range(0, deltas.shape[1], _CHUNK):
        part = deltas[:, start : start + _CHUNK]
        codes = (torch.sign(part).to(torch.int32) + 1) * powers
        for j in range(len(densities)):
            keep = levels[:, start : start + _CHUNK] <= j
            hists[j] += _sign_histogram(part, codes, keep, powers)
    table = _patterns(k)
    for j, d in enumerate(densities):
        out.counts[d].add(_counts_of(hists[j], table))
    return out


def _powers(k: int) -> torch.Tensor:
    import torch

    return torch.tensor([3**i for i in range(k)], dtype=torch.int32)


def _patterns(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every bin of the joint sign histogram: the K signs (-1, 0, +1) and the elected sign."""
    codes = np.arange(2 * 3**k)
    elected = np.where(codes % 2 == 1, 1, -1)
    digits = codes // 2
    signs = np.stack([(digits // 3**i) % 3 - 1 for i in range(k)], axis=1)
    return signs, elected


def _sign_histogram(
    delta: torch.Tensor, codes: torch.Tensor, keep: torch.Tensor, powers: torch.Tensor
) -> np.ndarray:
    """How many entries of a chunk have each joint pattern of trimmed signs and elected
    sign (bin ``2 * sum_i (sign_i + 1) * 3**i + [sum of trimmed values >= 0]``).
    ``codes[i]``: ``(sign(delta[i]) + 1) * 3**i`` (``powers[i]``); ``keep[i]``: the trim
    of model i. The trimmed values are summed in model order, as written."""
    import torch

    k = delta.shape[0]
    trimmed = torch.where(keep, delta, torch.zeros((), dtype=delta.dtype))
    total = trimmed[0].clone()
    for i in range(1, k):
        total += trimmed[i]
    code = torch.where(keep, codes, powers).sum(0, dtype=torch.int32)  # trimmed away: sign 0
    code = code * 2 + (total >= 0).to(torch.int32)
    return torch.bincount(code, minlength=2 * 3**k).numpy()


def _counts_of(hist: np.ndarray, table: tuple[np.ndarray, np.ndarray]) -> DensityCounts:
    """The counts of the module docstring, read off the joint sign histogram."""
    signs, elected = table
    nonzero = (signs != 0).astype(np.int64)
    per = nonzero.sum(1)
    mixed = (signs > 0).any(1) & (signs < 0).any(1)
    against = ((signs * elected[:, None]) < 0).sum(1)
    c = DensityCounts(
        signs.shape[1],
        overlap=int(hist[per >= 2].sum()),
        conflict=int(hist[mixed].sum()),
        kept=int((hist * per).sum()),
        against=int((hist * against).sum()),
    )
    pos, neg = (signs > 0).astype(np.int64), (signs < 0).astype(np.int64)
    c.pair_both = (nonzero * hist[:, None]).T @ nonzero
    opposite = (pos * hist[:, None]).T @ neg
    c.pair_opposite = opposite + opposite.T
    return c
