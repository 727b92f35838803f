"""Choosing the compute device (through accelerate for ``auto``)."""

from __future__ import annotations

from mergekit_like.errors import MergeError


def resolve_device(name: str) -> str:
    """'cpu', 'cuda' or 'auto' -> a torch device string; a clear error if CUDA is absent."""
    if name == "cpu":
        return "cpu"
    import torch

    if name == "cuda":
        if not torch.cuda.is_available():
            raise MergeError("--device cuda: no CUDA device is available here; use --device cpu")
        return "cuda"
    if name == "auto":
        from accelerate import PartialState

        return str(PartialState().device)
    raise MergeError(f"--device: expected cpu, cuda or auto, got {name!r}")
