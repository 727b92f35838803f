"""Legacy ``pytorch_model.bin`` checkpoints, loaded safely (weights_only, memory-mapped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergekit_like.errors import InputError
from mergekit_like.io.safetensors_header import TensorInfo

_TORCH_TO_SAFE = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


def load_bin(path: Path) -> dict[str, Any]:
    """Load a pickled checkpoint without executing code (weights_only) and mmap'd if possible."""
    import pickle

    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused to load: it holds more than tensors "
                         f"(weights_only): {str(exc).splitlines()[0]}") from None
    except (OSError, EOFError, RuntimeError) as exc:
        raise InputError(f"{path}: corrupt checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a dict of tensors")
    for key in state:
        if not isinstance(key, str):
            raise InputError(f"{path}: holds a tensor key {key!r:.60} that is not a string")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_bin_header(path: Path) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of a pickled checkpoint's tensors (data stays memory-mapped)."""
    out = {}
    for name, t in load_bin(path).items():
        dtype = _TORCH_TO_SAFE.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise InputError(f"{path}: tensor {name!r} has unsupported dtype {t.dtype}")
        out[name] = TensorInfo(path, dtype, tuple(t.shape), 0, t.numel() * t.element_size())
    return out
