"""Masks and rescaling of task vectors, on fixed tensors with hand-written expectations."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.draws import Draws
from mergekit_like.methods.sparsify import (
    Trim,
    della_probabilities,
    magnitude_mask,
    outlier_mask,
    sparsify,
    variance_mask,
)
from tests.methods.draws import documented_draws


def _ranked(n: int) -> torch.Tensor:
    """Magnitudes 1..n in a fixed shuffled order with alternating signs."""
    perm = torch.tensor([(7 * i + 3) % n for i in range(n)])  # n coprime with 7
    signs = torch.tensor([1.0 if i % 2 else -1.0 for i in range(n)])
    return (perm + 1).float() * signs


def test_magnitude_mask_keeps_the_largest():
    x = torch.tensor([0.5, -3.0, 2.0, -0.1, 1.0])
    assert magnitude_mask(x, 0.4).tolist() == [False, True, True, False, False]
    assert magnitude_mask(x, 1.0).all()
    # mergekit keeps max(1, int(0.1 * 5)) = 1 entry for any positive density
    assert magnitude_mask(x, 0.1).tolist() == [False, True, False, False, False]


def test_outlier_mask_drops_top_gamma_and_bottom():
    x = _ranked(20)
    # keep int(0.5*20)=10, drop int(0.1*20)=2 largest, so the 8 smallest go too: |x| in 9..18
    kept = x[outlier_mask(x, 0.5, 0.1)].abs().sort().values
    assert kept.tolist() == [float(v) for v in range(9, 19)]


def test_outlier_mask_density_plus_gamma_above_one_drops_fewer_large():
    x = _ranked(10)
    # keep 8, gamma asks 3 largest: only 2 can go, so |x| in 1..8 remain
    kept = x[outlier_mask(x, 0.8, 0.3)].abs().sort().values
    assert kept.tolist() == [float(v) for v in range(1, 9)]


def test_outlier_mask_small_tensor_gamma_rounding_to_zero_keeps_density():
    x = _ranked(20)  # int(0.01 * 20) == 0: no large entry dropped (mergekit would keep none)
    kept = x[outlier_mask(x, 0.25, 0.01)].abs().sort().values
    assert kept.tolist() == [16.0, 17.0, 18.0, 19.0, 20.0]


def test_della_probabilities_linear_in_row_rank():
    x = torch.tensor([[3.0, -1.0, 2.0], [0.0, 5.0, -4.0]])
    p = della_probabilities(x, 0.5, 0.1)
    # ranks by magnitude within each row: [2, 0, 1] and [0, 2, 1]; p = 0.4 + 0.2 * rank / 2
    torch.testing.assert_close(p, torch.tensor([[0.6, 0.4, 0.5], [0.4, 0.6, 0.5]]))
    one_row = della_probabilities(torch.tensor([1.0, -2.0]), 0.3, 0.2)
    torch.testing.assert_close(one_row, torch.tensor([0.1, 0.5]))


def test_della_probabilities_reject_epsilon_outside_unit_interval():
    with pytest.raises(ValueError, match="density - epsilon"):
        della_probabilities(torch.ones(4), 0.1, 0.15)


def test_random_trim_reproduces_from_the_generator_and_keeps_l1_norm():
    delta = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    out = sparsify(delta, Trim("random", 0.3, rescale="l1"), Draws(5, "w", 0, delta.numel()))
    mask = documented_draws(5, "w", 0, delta.shape) < 0.3
    scale = delta.abs().sum() / (delta * mask).abs().sum()
    torch.testing.assert_close(out, delta * mask * scale)
    torch.testing.assert_close(out.abs().sum(), delta.abs().sum())
    frac = mask.float().mean().item()  # Bernoulli(0.3) over 60000 entries: sd 0.0019
    assert abs(frac - 0.3) < 0.008


def test_random_trim_paper_rescale_divides_kept_by_density():
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    out = sparsify(delta, Trim("random", 0.25, rescale="probability"), Draws(2, "w", 0, 1000))
    kept = out != 0
    torch.testing.assert_close(out[kept], delta[kept] / 0.25)
    raw = sparsify(delta, Trim("random", 0.25), Draws(2, "w", 0, 1000))
    assert torch.equal(raw[kept], delta[kept]) and torch.equal(raw != 0, kept)


def test_della_trim_spares_large_entries_and_keeps_density_on_average():
    delta = torch.randn(2000, 50, generator=torch.Generator().manual_seed(3))
    out = sparsify(delta, Trim("della", 0.4, epsilon=0.2, rescale="probability"),
                   Draws(4, "w", 0, delta.numel()))
    kept = out != 0
    order = delta.abs().argsort(dim=1)
    smallest = kept.gather(1, order[:, :1]).float().mean().item()  # p = 0.2
    largest = kept.gather(1, order[:, -1:]).float().mean().item()  # p = 0.6
    assert abs(smallest - 0.2) < 0.04 and abs(largest - 0.6) < 0.05
    assert abs(kept.float().mean().item() - 0.4) < 0.01
    p = della_probabilities(delta, 0.4, 0.2)
    torch.testing.assert_close(out[kept], delta[kept] / p[kept])


def test_density_extremes():
    delta = torch.tensor([1.0, -2.0, 3.0])
    assert sparsify(delta, Trim("magnitude", 1.0, rescale="l1")) is delta
    assert torch.equal(sparsify(delta, Trim("random", 0.0), Draws(0, "w", 0, 3)), torch.zeros(3))


def test_magnitude_trim_l1_rescale():
    delta = torch.tensor([4.0, -1.0, 0.5, -2.5])
    out = sparsify(delta, Trim("magnitude", 0.5, rescale="l1"))
    torch.testing.assert_close(out, torch.tensor([4.0, 0.0, 0.0, -2.5]) * (8.0 / 6.5))


def test_variance_mask_selects_highest_variance_positions():
    a = torch.tensor([1.0, 0.0, 2.0, 5.0])
    b = torch.tensor([1.0, 4.0, -2.0, 4.0])
    # population variances: 0, 4, 4, 0.25 -> 3 non-zero; int(0.7 * 3) = 2 kept
    assert variance_mask([a, b], 0.7).tolist() == [False, True, True, False]
