"""Sparsification of task vectors: keep the largest-magnitude fraction of each tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """A boolean mask keeping the ``int(density * numel)`` entries of largest magnitude.

    ``density >= 1`` keeps everything; ``density`` so small that no entry survives keeps
    nothing. Exactly k entries are kept (ties at the threshold broken by position).
    """
    import torch

    numel = delta.numel()
    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    k = int(density * numel)
    mask = torch.zeros(numel, dtype=torch.bool, device=delta.device)
    if k > 0:
        top = torch.topk(delta.abs().reshape(-1), k, sorted=False).indices
        mask[top] = True
    return mask.view_as(delta)
