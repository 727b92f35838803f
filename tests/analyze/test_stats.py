"""analyze/stats.py on task vectors full of equal magnitudes (as bfloat16 fine-tunes give):
the trims and every sign count against numpy, written out here, with ties at the cut kept
first by position (a stable sort of -|x|)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergekit_like.analyze import stats

DENSITIES = (0.1, 0.25, 0.5, 1.0)


def _np_trim(v: np.ndarray, density: float) -> np.ndarray:
    if density >= 1:
        return v.copy()
    keep = max(1, int(density * v.size))
    top = np.argsort(-np.abs(v), kind="stable")[:keep]
    out = np.zeros_like(v)
    out[top] = v[top]
    return out


def _np_counts(deltas: np.ndarray, density: float) -> dict:
    t = np.stack([_np_trim(v, density) for v in deltas])
    nonzero = t != 0
    total = t[0].copy()
    for row in t[1:]:
        total += row
    elected = np.where(total >= 0, 1, -1)
    k = len(deltas)
    both = np.array([[(nonzero[i] & nonzero[j]).sum() for j in range(k)] for i in range(k)])
    opposite = np.array(
        [
            [(nonzero[i] & nonzero[j] & (np.sign(t[i]) != np.sign(t[j]))).sum() for j in range(k)]
            for i in range(k)
        ]
    )
    return {
        "overlap": int((nonzero.sum(0) >= 2).sum()),
        "conflict": int(((t > 0).any(0) & (t < 0).any(0)).sum()),
        "kept": int(nonzero.sum()),
        "against": int((nonzero & (np.sign(t) != elected)).sum()),
        "both": both,
        "opposite": opposite,
    }


@pytest.fixture
def tied() -> np.ndarray:
    """Three task vectors of small integers: most magnitudes are shared by many entries."""
    gen = np.random.default_rng(3)
    deltas = gen.integers(-4, 5, size=(3, 5003)).astype(np.float64)
    deltas[1, :40] = 0.0  # an ingredient that left entries alone
    return deltas


@pytest.mark.parametrize("chunk", [stats._CHUNK, 97])
def test_counts_match_numpy_with_ties(tied, monkeypatch, chunk) -> None:
    monkeypatch.setattr(stats, "_CHUNK", chunk)
    got = stats.tensor_stats(torch.from_numpy(tied), DENSITIES)
    np.testing.assert_allclose(got.dots, tied @ tied.T, rtol=1e-15)
    for d in DENSITIES:
        want, c = _np_counts(tied, d), got.counts[d]
        assert (c.overlap, c.conflict, c.kept, c.against) == (
            want["overlap"],
            want["conflict"],
            want["kept"],
            want["against"],
        ), d
        np.testing.assert_array_equal(c.pair_both, want["both"])
        np.testing.assert_array_equal(c.pair_opposite, want["opposite"])


def test_trim_keeps_exactly_the_first_of_equal_magnitudes(tied) -> None:
    for v in tied:
        for d in (0.01, 0.1, 0.25, 0.5, 0.9):
            mask = stats.trim_mask(torch.from_numpy(v), d).numpy()
            assert mask.sum() == max(1, int(d * v.size))
            keep = max(1, int(d * v.size))
            want = np.zeros(v.size, dtype=bool)
            want[np.argsort(-np.abs(v), kind="stable")[:keep]] = True
            np.testing.assert_array_equal(mask, want)


def test_levels_are_the_nested_trims(tied) -> None:
    levels = stats.keep_levels(torch.from_numpy(tied), DENSITIES).numpy()
    for i, v in enumerate(tied):
        for j, d in enumerate(DENSITIES):
            want = (
                np.ones(v.size, dtype=bool)
                if d >= 1
                else stats.trim_mask(torch.from_numpy(v), d).numpy()
            )
            np.testing.assert_array_equal(levels[i] <= j, want)


def test_a_single_kept_entry_and_all_equal_magnitudes() -> None:
    v = torch.full((1, 10), -2.0, dtype=torch.float64)
    got = stats.tensor_stats(torch.cat([v, -v]), (0.05, 0.3))
    assert got.counts[0.05].kept == 2  # max(1, int(0.05 * 10)): entry 0 of each
    assert got.counts[0.05].conflict == 1  # -2 against +2 at entry 0
    assert got.counts[0.3].kept == 6 and got.counts[0.3].overlap == 3
