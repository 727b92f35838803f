"""The ingredients of a soup, one live model to score candidates in, and the running sum.

Ingredient tensors are read through the core's catalogs and :class:`TensorReader`, from the
plan of the uniform linear soup (which also checks that every ingredient has the same tensor
names and shapes). A candidate ``sum_w * S + sum_k w_k * theta_k`` is built tensor by tensor
straight into the live model, so a step costs one pass over the ingredients it names. The
model is loaded once (:func:`load_model`); candidates only overwrite its tensors in place.

Ingredients read once are kept in memory (float32) while they fit the soup's
``memory_budget``, after setting aside room for one running sum; the rest are read from
disk each time a candidate needs them.

:class:`RunningSum` holds ``S``: float32 tensors in memory when they fit the budget, else a
safetensors file in the staging folder, updated in place through a memory map.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.errors import MergeError
from mergekit_like.io.reader import TensorReader
from mergekit_like.plan.build import COPY, Plan

if TYPE_CHECKING:
    import numpy as np
    import torch

SUM_FILE = ".soup-running-sum.safetensors"


def load_model(folder: Path, device: str) -> Any:
    """Load a Hugging Face model folder with the class named in its config (float32, eval)."""
    import transformers

    try:
        arch = json.loads((folder / "config.json").read_text())["architectures"][0]
        cls = getattr(transformers, arch)
    except (OSError, KeyError, IndexError, TypeError, json.JSONDecodeError, AttributeError):
        raise MergeError(f"{folder}: config.json names no transformers architecture "
                         "('architectures'); evaluation needs one to load the model") from None
    import torch
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(folder, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def checkpoint_names(model: Any) -> dict[str, str]:
    """Checkpoint tensor name -> the model's own state-dict name.

    transformers 5 renames some weights on load (e.g. ViT's ``attention.attention.query``
    becomes ``attention.q_proj``) and back on save; a pure rename keeps the tensor, so the
    two names are matched by storage.
    """
    state = model.state_dict()
    names = {n: n for n in state}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers: checkpoint names are the module names
        return names
    by_storage = {(t.data_ptr(), tuple(t.shape)): n for n, t in state.items()}
    for ckpt, tensor in revert_weight_conversion(model, dict(state)).items():
        own = by_storage.get((tensor.data_ptr(), tuple(tensor.shape)))
        if own is not None:
            names[ckpt] = own
    return names


class Ingredients:
    """Reads ingredient tensors and loads mixtures of them into one live model.

    ``budget`` (bytes) bounds the ingredients kept in memory: one float32 copy of the merged
    tensors is set aside for a running sum, and each ingredient is kept, when first read,
    while the rest of the budget has room for it. ``budget=0`` reads everything from disk.
    """

    def __init__(self, plan: Plan, reader: TensorReader, model: Any, budget: int = 0) -> None:
        self.plan = plan
        self.reader = reader
        self.model = model
        self.tensors = [t for t in plan.tensors if t.method != COPY]
        self.disk_reads = 0  # tensors read from disk (a measure of what the cache saves)
        self._room = budget - self.nbytes_float32()  # the budget less one running sum
        self._kept: dict[int, dict[int, torch.Tensor] | None] = {}  # None: read from disk
        state = model.state_dict()
        own = checkpoint_names(model)
        missing = [t.name for t in self.tensors if t.name not in own]
        if missing:
            raise MergeError(f"the model class does not hold tensors {missing[:3]} of the "
                             "ingredients; evaluation needs a checkpoint the class can load")
        self.model_names: Mapping[str, str] = {t.name: own[t.name] for t in self.tensors}
        self.targets: Mapping[str, torch.Tensor] = {
            t.name: state[own[t.name]] for t in self.tensors}

    @property
    def count(self) -> int:
        """Number of ingredients (the derived recipe's models)."""
        return len(self.refs)

    @property
    def refs(self) -> list[str]:
        """The recipe's reference of each ingredient, in order."""
        return [m.model for m in self.plan.recipe.recipe.models or []]

    @property
    def in_memory(self) -> list[int]:
        """The ingredients kept in memory so far."""
        return sorted(k for k, kept in self._kept.items() if kept is not None)

    def read(self, k: int, index: int, device: str = "cpu") -> torch.Tensor:
        """Tensor ``index`` (of :attr:`tensors`) of ingredient ``k``, as float32.

        The tensor may be the kept copy: callers must not modify it in place.
        """
        kept = self._keep(k)
        if kept is not None and index in kept:
            return kept[index].to(device)
        ref = self.tensors[index].inputs[k]
        info = self.plan.models[ref.model].tensors[ref.name]
        self.disk_reads += 1
        if kept is None:
            return self.reader.read(info, ref.name, dtype="float32", device=device)
        kept[index] = self.reader.read(info, ref.name, dtype="float32")
        return kept[index].to(device)

    def _keep(self, k: int) -> dict[int, torch.Tensor] | None:
        """Ingredient ``k``'s kept tensors, deciding on its first read whether it fits."""
        if k not in self._kept:
            size = self.nbytes_float32()
            fits = size <= self._room
            if fits:
                self._room -= size
            self._kept[k] = {} if fits else None
        return self._kept[k]

    def mix(self, weights: Mapping[int, float], running: RunningSum | None = None,
            sum_weight: float = 0.0) -> None:
        """Load ``sum_weight * running + sum_k weights[k] * ingredient_k`` into the model."""
        import torch

        with torch.no_grad():
            for i, t in enumerate(self.tensors):
                target = self.targets[t.name]
                acc = torch.zeros(target.shape, dtype=torch.float32)
                if running is not None and sum_weight:
                    acc.add_(running.get(t.name), alpha=sum_weight)
                for k, w in weights.items():
                    if w:
                        acc.add_(self.read(k, i), alpha=w)
                target.copy_(acc)

    def add_to(self, running: RunningSum, k: int) -> None:
        """``running += ingredient_k`` (one pass over that ingredient)."""
        for i, t in enumerate(self.tensors):
            running.add(t.name, self.read(k, i))
        running.count += 1

    def nbytes_float32(self) -> int:
        """Bytes of one float32 copy of the merged tensors."""
        return sum(4 * _numel(t.shape) for t in self.tensors)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class RunningSum:
    """A float32 sum of ingredients: in memory within ``budget`` bytes, else on disk."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], budget: int, staging: Path) -> None:
        import torch

        self.count = 0
        self.path: Path | None = None
        self._shapes = dict(shapes)
        total = sum(4 * _numel(s) for s in shapes.values())
        self._mem: dict[str, torch.Tensor] = {}
        self._maps: dict[str, np.memmap] = {}
        if total <= budget:
            self._mem = {n: torch.zeros(s, dtype=torch.float32) for n, s in shapes.items()}
            return
        import numpy as np

        from mergekit_like.io.writer import layout_shards

        layout = layout_shards([(n, "F32", s) for n, s in shapes.items()], max(total, 1) * 2)
        self.path = staging / SUM_FILE
        with self.path.open("wb") as f:
            f.write(layout.headers[0])
            f.truncate(layout.sizes[0])
        for name, shape in shapes.items():
            slot = layout.slots[name]
            self._maps[name] = np.memmap(self.path, dtype=np.float32, mode="r+",
                                         offset=slot.start, shape=shape or (1,))

    @property
    def on_disk(self) -> bool:
        """Whether the sum lives in a safetensors file rather than in memory."""
        return self.path is not None

    def get(self, name: str) -> torch.Tensor:
        """The current sum of tensor ``name`` (a view of the file when on disk)."""
        import torch

        if self.path is None:
            return self._mem[name]
        return torch.from_numpy(self._maps[name]).reshape(self._shapes[name])

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Add ``tensor`` to the sum of ``name`` in place."""
        self.get(name).add_(tensor)

    def close(self) -> None:
        """Flush and drop the memory maps, and delete the file."""
        for mm in self._maps.values():
            mm.flush()
        self._maps.clear()
        if self.path is not None and self.path.exists():
            self.path.unlink()
