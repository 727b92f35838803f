"""LoRA ingredients: ``model+adapter`` references, applied tensor by tensor while streaming.

A PEFT-format adapter folder holds ``adapter_config.json`` (``r``, ``lora_alpha``,
``use_rslora``, ``fan_in_fan_out``) and ``adapter_model.safetensors`` with ``lora_A`` (r x in)
and ``lora_B`` (out x r) per target module. The adapted weight is

    W' = W + scale * B @ A,   scale = lora_alpha / r   (rsLoRA: lora_alpha / sqrt(r))

transposed for ``fan_in_fan_out`` layers (GPT-2's Conv1D) and embeddings. Nothing is
merged ahead of time: the catalog marks each adapted tensor with a :class:`LoraTensorInfo`,
and the reader adds the delta to exactly the rows it reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from mergekit_like.errors import InputError
from mergekit_like.io.safetensors_header import TensorInfo, read_header

if TYPE_CHECKING:
    import torch

    Catalog = TypeVar("Catalog")  # an io.catalog.ModelCatalog (it imports this module)

_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraTensorInfo(TensorInfo):
    """A base tensor plus the LoRA factors to add to it when it is read."""

    lora_a: TensorInfo
    lora_b: TensorInfo
    scale: float
    transpose: bool  # the weight is stored (in, out): delta = (B @ A).T


def _adapter_tensors(folder: Path) -> dict[str, TensorInfo]:
    if (folder / "adapter_model.safetensors").is_file():
        return read_header(folder / "adapter_model.safetensors")
    if (folder / "adapter_model.bin").is_file():
        from mergekit_like.io.pickle_checkpoint import read_bin_header

        return read_bin_header(folder / "adapter_model.bin")
    raise InputError(f"{folder}: no adapter_model.safetensors (is it a PEFT LoRA adapter?)")


def apply_adapter(base: Catalog, ref: str, folder: Path,
                  adapter: Mapping[str, TensorInfo] | None = None) -> Catalog:
    """The catalog of ``base`` with every tensor the adapter targets marked for LoRA.

    ``adapter``: the adapter's tensors when already known (a hub adapter's header, read
    remotely); by default they are read from ``folder``.
    """
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
        alpha = float(config["lora_alpha"])
        rank_default = int(config["r"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(f"{folder}/adapter_config.json: missing or unreadable "
                         "(needs 'r' and 'lora_alpha')") from None
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    adapter = _adapter_tensors(folder) if adapter is None else adapter
    tensors = dict(base.tensors)
    for key, info in adapter.items():
        name = key.removeprefix(_PREFIX)
        for a_tag, b_tag, embedding in ((".lora_A.weight", ".lora_B.weight", False),
                                        (".lora_embedding_A", ".lora_embedding_B", True)):
            if name.endswith(a_tag):
                module = name[: -len(a_tag)]
                target = f"{module}.weight"
                b_info = adapter.get(key[: -len(a_tag)] + b_tag)
                if target not in tensors or b_info is None:
                    raise InputError(f"{folder}: adapter targets {module!r}, which the model "
                                     f"{base.ref!r} does not have (or lora_B is missing)")
                rank = info.shape[0] if info.shape else rank_default
                mod_alpha = next((float(v) for k, v in alpha_pattern.items()
                                  if module.endswith(k)), alpha)
                scale = mod_alpha / (math.sqrt(rank) if rslora else rank)
                w = tensors[target]
                transpose = embedding or fan_in_fan_out
                out_dim, in_dim = b_info.shape[0], info.shape[1]
                want = (in_dim, out_dim) if transpose else (out_dim, in_dim)
                if tuple(w.shape) != want:
                    raise InputError(f"{folder}: LoRA factors of {module!r} give shape "
                                     f"{list(want)}, the weight has {list(w.shape)}")
                tensors[target] = LoraTensorInfo(w.file, w.dtype, w.shape, w.start, w.end,
                                                 info, b_info, scale, transpose)
                break
        else:
            if ".lora_" in name:
                continue  # lora_B, handled with its lora_A
            if name not in tensors or tensors[name].shape != info.shape:
                raise InputError(f"{folder}: adapter tensor {name!r} does not match the model")
            tensors[name] = replace(info)  # modules_to_save: a full replacement
    return replace(base, ref=ref, tensors=MappingProxyType(tensors))  # type: ignore[type-var]


def lora_delta(info: LoraTensorInfo, rows: tuple[int, int] | None, read_factor,  # noqa: ANN001
               device: str | torch.device) -> torch.Tensor:
    """``scale * B @ A`` (or its transpose) for rows [r0, r1) of the weight, in float32."""
    a = read_factor(info.lora_a)  # (r, in)
    b = read_factor(info.lora_b)  # (out, r)
    if info.transpose:
        a_cols = a if rows is None else a[:, rows[0]:rows[1]]
        delta = a_cols.T @ b.T
    else:
        b_rows = b if rows is None else b[rows[0]:rows[1]]
        delta = b_rows @ a
    return delta.mul_(info.scale).to(device)
