"""Recognising transformer layers from tensor names, for any architecture.

A tensor belongs to layer N when its name contains ``.layers.N.``, ``.h.N.``, ``.layer.N.``
or ``.blocks.N.`` (or starts with it). A model may hold several such stacks (a vision
tower beside the language model); the *main stack* is the one with the most tensors, and
tensors of the other stacks are treated like embeddings and norms: outside the layers.
No per-architecture files: the names say it all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class LayerName:
    """A tensor name split around its layer index: ``head + str(index) + tail``."""

    head: str
    index: int
    tail: str

    def with_index(self, index: int) -> str:
        return f"{self.head}{index}{self.tail}"


def split_layer_name(name: str) -> LayerName | None:
    """Split ``model.layers.3.mlp.up_proj.weight`` into ('model.layers.', 3, '.mlp....').

    >>> split_layer_name("transformer.h.1.attn.c_attn.weight")
    LayerName(head='transformer.h.', index=1, tail='.attn.c_attn.weight')
    >>> split_layer_name("model.norm.weight") is None
    True
    """
    m = _LAYER.search(name)
    if m is None:
        return None
    return LayerName(name[: m.start(1)], int(m.group(1)), name[m.end(1):])


@dataclass(frozen=True)
class LayerLayout:
    """How a model's tensors divide into the main layer stack and everything else."""

    head: str | None  # the main stack's head, e.g. 'model.layers.'
    num_layers: int
    layers: tuple[tuple[str, ...], ...]  # per layer index: the tails present
    other: tuple[str, ...]  # names outside the main stack, in their original order

    def layer_names(self, index: int) -> list[str]:
        assert self.head is not None
        return [f"{self.head}{index}{tail}" for tail in self.layers[index]]


def layer_layout(names: Iterable[str]) -> LayerLayout:
    """Find the main layer stack among tensor names."""
    names = list(names)
    split = {n: split_layer_name(n) for n in names}
    heads = Counter(s.head for s in split.values() if s is not None)
    if not heads:
        return LayerLayout(None, 0, (), tuple(names))
    head = heads.most_common(1)[0][0]
    num = 1 + max(s.index for s in split.values() if s is not None and s.head == head)
    per_layer: list[list[str]] = [[] for _ in range(num)]
    other = []
    for n in names:
        s = split[n]
        if s is not None and s.head == head:
            per_layer[s.index].append(s.tail)
        else:
            other.append(n)
    return LayerLayout(head, num, tuple(tuple(t) for t in per_layer), tuple(other))
