"""Running statistics of K task vectors, accumulated one tensor at a time.

A task vector is an ingredient minus the base model. For a group of tensors (the whole
model, one layer, one kind of tensor) :class:`GroupStats` keeps, in float64 and integer
counts only (never the vectors themselves):

- ``dots[i][j]``: the dot product of task vectors i and j over the group (so
  ``sqrt(dots[i][i])`` is i's norm and ``dots[i][j] / (norm_i * norm_j)`` their cosine);
- per trim density d, after TIES's trim (each task vector keeps, per tensor, its
  ``max(1, int(d * n))`` entries of largest magnitude; the rest become 0):

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
    "its max(1, int(density * n)) entries of largest magnitude, the rest become 0.",
    "",
    "- *conflict*: among entries where at least two trimmed task vectors are nonzero, the "
    "fraction where their signs are not all the same.",
    "- *TIES disagree*: among nonzero trimmed values (over models and entries), the fraction "
    "whose sign differs from the elected sign (the sign of the entry's sum of trimmed values; "
    "a zero sum elects +): the share that TIES's disjoint mean drops.",
)
_CHUNK = 1 << 22  # entries counted at a time (float32 counts stay exact below 2**24)


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


def tensor_stats(deltas: torch.Tensor, densities: tuple[float, ...]) -> GroupStats:
    """The statistics of one tensor's K task vectors ``deltas`` (K x n, float64)."""
    import torch

    from mergekit_like.methods.sparsify import magnitude_mask

    k = deltas.shape[0]
    out = GroupStats(k, densities, numel=deltas.shape[1], tensors=1)
    out.dots = (deltas @ deltas.T).numpy()
    for d in densities:
        mask = torch.stack([magnitude_mask(deltas[i], d) for i in range(k)])
        counts = out.counts[d]
        for start in range(0, deltas.shape[1], _CHUNK):
            part = deltas[:, start : start + _CHUNK]
            counts.add(_sign_counts(part, mask[:, start : start + _CHUNK]))
    return out


def _sign_counts(delta: torch.Tensor, mask: torch.Tensor) -> DensityCounts:
    import torch

    trimmed = torch.where(mask, delta, torch.zeros((), dtype=delta.dtype))
    pos, neg = trimmed > 0, trimmed < 0
    nonzero = pos | neg
    count = nonzero.sum(0)
    has_pos, has_neg = pos.any(0), neg.any(0)
    elected_pos = trimmed.sum(0) >= 0
    against = torch.where(elected_pos, neg, pos)  # broadcast over models
    k = delta.shape[0]
    c = DensityCounts(
        k,
        overlap=int((count >= 2).sum()),
        conflict=int((has_pos & has_neg).sum()),
        kept=int(count.sum()),
        against=int(against.sum()),
    )
    p, n, z = pos.float(), neg.float(), nonzero.float()
    c.pair_both = (z @ z.T).round().long().numpy()
    c.pair_opposite = (p @ n.T + n @ p.T).round().long().numpy()
    return c
