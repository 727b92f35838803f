"""Recognising transformer layer stacks from tensor names, for any architecture.

A tensor belongs to layer N of a stack when its name contains ``.layers.N.``, ``.h.N.``,
``.layer.N.``, ``.block.N.`` or ``.blocks.N.`` (or starts with it); the first such place in
the name is the stack, so T5's ``block.N.layer.M.`` sub-layers stay inside their block. A
model may hold several stacks (a vision tower beside the language model, an encoder beside
a decoder): each is a :class:`Stack` with the config key that counts its layers, found by
the count (a stack of N blocks and a ``num_hidden_layers``, ``decoder_layers``,
``text_config.num_hidden_layers``, ``vision_config.depth``... equal to N; the words of the
stack's name and of the key settle ties). Tensors outside every stack belong to the stack
whose name shares the most leading parts with theirs (ties: the stack their words name, as
CLIP's ``visual_projection`` the vision tower, else the main stack).

The *main stack* is the language model's: the only stack when there is one, else the decoder,
else the text stack. Slices address it unless a recipe's ``modules:`` names another. No
per-architecture files: the names say it all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)\.")
COUNT_KEYS = frozenset(
    {
        "num_hidden_layers",
        "n_layer",
        "n_layers",
        "num_layers",
        "decoder_layers",
        "encoder_layers",
        "num_decoder_layers",
        "num_encoder_layers",
        "depth",
    }
)
# words that tell stacks apart, and the words that mean them in names and config keys
_ROLES = {
    "vision": {"vision", "visual", "image", "vit"},
    "text": {"text", "language"},
    "encoder": {"encoder"},
    "decoder": {"decoder"},
}


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
    >>> split_layer_name("encoder.block.0.layer.1.DenseReluDense.wi.weight").head
    'encoder.block.'
    >>> split_layer_name("model.norm.weight") is None
    True
    """
    m = _LAYER.search(name)
    if m is None:
        return None
    return LayerName(name[: m.start(1)], int(m.group(1)), name[m.end(1) :])


def roles(text: str) -> frozenset[str]:
    """The roles ('vision', 'text', 'encoder', 'decoder') a name or config key speaks of.

    >>> sorted(roles("model.vision_tower.vision_model.encoder.layers."))
    ['encoder', 'vision']
    """
    words = set(re.split(r"[._\d]+", text.lower()))
    return frozenset(r for r, syn in _ROLES.items() if words & syn)


@dataclass(frozen=True)
class Stack:
    """One stack of layers: its name head, depth, tails per layer and config key."""

    head: str  # e.g. 'model.layers.'
    num_layers: int
    layers: tuple[tuple[str, ...], ...]  # per layer index: the tails present
    config_keys: tuple[str, ...]  # dotted paths of the config keys counting it, best first

    @property
    def config_key(self) -> str | None:
        """The config key counting this stack (e.g. 'decoder_layers'), if one does."""
        return self.config_keys[0] if self.config_keys else None

    @property
    def prefix(self) -> str:
        """The head without its trailing dot: mergekit's name for a module it infers."""
        return self.head[:-1]

    @property
    def roles(self) -> frozenset[str]:
        return roles(self.head)

    def layer_names(self, index: int) -> list[str]:
        return [f"{self.head}{index}{tail}" for tail in self.layers[index]]


@dataclass(frozen=True)
class LayerLayout:
    """How a model's tensors divide into layer stacks and everything else."""

    stacks: tuple[Stack, ...]  # in the order their first tensor appears
    main: int | None  # index into stacks of the language model's stack; None: ambiguous
    other: tuple[str, ...]  # names outside every stack, in their original order
    owner: Mapping[str, int]  # for each name in ``other``: the stack it belongs to

    @property
    def main_stack(self) -> Stack | None:
        return None if self.main is None else self.stacks[self.main]

    @property
    def head(self) -> str | None:
        s = self.main_stack
        return s.head if s else None

    @property
    def num_layers(self) -> int:
        s = self.main_stack
        return s.num_layers if s else 0

    @property
    def layers(self) -> tuple[tuple[str, ...], ...]:
        s = self.main_stack
        return s.layers if s else ()

    def layer_names(self, index: int) -> list[str]:
        assert self.main_stack is not None
        return self.main_stack.layer_names(index)

    def names(self) -> list[str]:
        """Module names: the ones mergekit's recipes use (see :func:`module_names`)."""
        return module_names(self)[0]


def layer_layout(names: Iterable[str], config: Mapping[str, Any] | None = None) -> LayerLayout:
    """Find every layer stack among tensor names, each with its config key."""
    names = list(names)
    split = {n: split_layer_name(n) for n in names}
    order: dict[str, dict[int, list[str]]] = {}
    other = []
    for n in names:
        s = split[n]
        if s is None:
            other.append(n)
        else:
            order.setdefault(s.head, {}).setdefault(s.index, []).append(s.tail)
    keys = count_keys(config or {})
    stacks = []
    for head, per in order.items():
        num = 1 + max(per)
        layers = tuple(tuple(per.get(i, ())) for i in range(num))
        stacks.append(Stack(head, num, layers, _config_keys(head, num, keys)))
    main = _main_stack(stacks)
    owner = {n: _owner(n, stacks, main) for n in other} if stacks else {}
    return LayerLayout(tuple(stacks), main, tuple(other), owner)


def count_keys(config: Mapping[str, Any], path: str = "") -> dict[str, int]:
    """Every layer-count key of a config, nested configs included, by dotted path.

    >>> count_keys({"num_hidden_layers": 2, "vision_config": {"depth": 3}, "depth_x": 1})
    {'num_hidden_layers': 2, 'vision_config.depth': 3}
    """
    out: dict[str, int] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(count_keys(value, f"{path}{key}."))
        elif key in COUNT_KEYS and isinstance(value, int) and not isinstance(value, bool):
            out[f"{path}{key}"] = value
    return out


def _config_keys(head: str, num: int, keys: Mapping[str, int]) -> tuple[str, ...]:
    """The keys counting a stack of ``num`` layers: same count, then the closest words.

    Beside the best key, a key of the same name elsewhere in the config that speaks of no
    other role (a legacy top-level ``num_hidden_layers`` beside ``text_config``'s) counts it too.
    """
    mine = roles(head) or frozenset({"text", "decoder"})
    scored = []
    for key, value in keys.items():
        if value == num:
            theirs = roles(key)
            scored.append((-(2 * len(mine & theirs) - len(theirs - mine) - key.count(".")), key))
    if not scored:
        return ()
    best = min(scored)[1]
    leaf = best.rsplit(".", 1)[-1]
    extra = [
        k
        for _, k in sorted(scored)
        if k != best and k.rsplit(".", 1)[-1] == leaf and roles(k) <= mine
    ]
    return (best, *extra)


def _main_stack(stacks: list[Stack]) -> int | None:
    if len(stacks) == 1:
        return 0
    for wanted in (
        lambda r: "decoder" in r and "vision" not in r,
        lambda r: "text" in r and "vision" not in r,
        lambda r: not r,
    ):
        found = [i for i, s in enumerate(stacks) if wanted(s.roles)]
        if found:
            return found[0] if len(found) == 1 else None
    return None


def _owner(name: str, stacks: list[Stack], main: int | None) -> int:
    """The stack a tensor outside the layers belongs to: most leading name parts shared."""
    parts = name.split(".")

    def shared(s: Stack) -> int:
        n = 0
        for a, b in zip(parts, s.head.split(".")[:-2], strict=False):
            if a != b:
                break
            n += 1
        return n

    scores = [shared(s) for s in stacks]
    top = max(scores)
    best = [i for i, v in enumerate(scores) if v == top]
    mine = roles(name)
    by_role = [i for i in best if mine and mine <= stacks[i].roles]
    if len(by_role) == 1:
        return by_role[0]
    if len(best) == 1:
        return best[0]
    return main if main is not None and main in best else best[0]


def module_names(layout: LayerLayout) -> tuple[list[str], dict[str, int]]:
    """Each stack's module name, and every name (aliases too) a recipe may use for it.

    A single stack is ``default``. With several, the names follow mergekit's definitions:
    ``vision_tower``, ``decoder``, ``encoder``, ``text_decoder`` (a language model beside a
    vision tower), ``text_encoder``; a stack may also be called by its prefix
    (``model.layers``), the name mergekit gives a module it infers from tensor names.
    """
    stacks = layout.stacks
    if not stacks:
        return [], {}
    if len(stacks) == 1:
        return ["default"], {"default": 0, stacks[0].prefix: 0}
    canon = [_canonical(s.roles) for s in stacks]
    names = [c if canon.count(c) == 1 else s.prefix for c, s in zip(canon, stacks, strict=True)]
    alias = {n: i for i, n in enumerate(names)}
    for i, s in enumerate(stacks):
        alias.setdefault(s.prefix, i)
    return names, alias


# mergekit's modules without layers, and the name parts of the tensors they hold
LOOSE_MODULES = {
    "multi_modal_projector": ("multi_modal_projector", "mm_projector", "merger"),
    "shared": ("shared", "lm_head"),
}


def loose_module(layout: LayerLayout, name: str) -> tuple[str, ...]:
    """The tensors of mergekit's module ``name`` that has no layers, as in ``LOOSE_MODULES``.

    A model with several stacks keeps, outside them, a projector between the vision tower
    and the language model (``multi_modal_projector``; Qwen2-VL's ``visual.merger``) or the
    embedding an encoder and a decoder share (T5's ``shared``, with the output head).
    """
    words = LOOSE_MODULES.get(name, ())
    if len(layout.stacks) < 2:
        return ()
    return tuple(n for n in layout.other if set(n.split(".")) & set(words))


def _canonical(r: frozenset[str]) -> str:
    if "vision" in r:
        return "vision_tower"
    if "decoder" in r:
        return "decoder"
    if "encoder" in r:
        return "text_encoder" if "text" in r else "encoder"
    return "text_decoder"
