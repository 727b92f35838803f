"""Custom scorers for the BERT tests: they record what the evaluation block passes them."""

from __future__ import annotations

from typing import Any

CALLS: list[dict[str, Any]] = []
LOSSES: list[dict[str, Any]] = []


def accuracy(model: Any, device: str, *, split: str, data: Any, batch_size: int) -> float:
    """Accuracy on ``data``, batch by batch; records its arguments and torch's threads."""
    import torch

    CALLS.append(
        {
            "split": split,
            "n": len(data),
            "batch_size": batch_size,
            "device": device,
            "threads": torch.get_num_threads(),
        }
    )
    correct = 0
    with torch.no_grad():
        for inputs, labels in data.batches(batch_size):
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
            correct += int((logits.argmax(-1) == labels).sum())
    return correct / len(data)


def train_loss(model: Any, device: str, inputs: dict, labels: Any, **kw: Any) -> Any:
    """Cross-entropy of one batch (learned_soup's objective); records it."""
    import torch.nn.functional as F

    loss = F.cross_entropy(model(**inputs).logits, labels)
    LOSSES.append({"n": int(labels.numel()), "loss": float(loss.detach()), "keys": sorted(kw)})
    return loss
