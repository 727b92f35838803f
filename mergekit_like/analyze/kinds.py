"""Which part of a model a tensor belongs to: its layer (if any) and its kind.

Kinds are read from the tensor's name, never from the model's class: ``norms``,
``embeddings``, ``attention``, ``mlp`` and ``other`` (classifier heads, poolers, anything
unrecognised). The first rule that matches wins, in that order.

>>> tensor_kind("model.layers.0.self_attn.q_proj.weight")
'attention'
>>> tensor_kind("bert.encoder.layer.1.attention.output.LayerNorm.weight")
'norms'
>>> tensor_kind("bert.encoder.layer.1.output.dense.weight")
'mlp'
>>> layer_key("model.layers.3.mlp.up_proj.weight")
('model.layers.', 3)
"""

from __future__ import annotations

import re

from mergekit_like.plan.layers import split_layer_name

KINDS = ("attention", "mlp", "embeddings", "norms", "other")

_NORM = {
    "norm",
    "layernorm",
    "layer_norm",
    "ln",
    "ln_1",
    "ln_2",
    "ln_f",
    "rmsnorm",
    "input_layernorm",
    "post_attention_layernorm",
    "final_layernorm",
}
_EMBED = {
    "embed",
    "embeddings",
    "embed_tokens",
    "wte",
    "wpe",
    "word_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "lm_head",
    "embed_positions",
    "embed_in",
    "embed_out",
    "shared",
    "patch_embeddings",
    "cls_token",
    "position_embedding",
    "patch_embedding",
    "token_embedding",
}
_ATTN = {
    "attn",
    "attention",
    "self_attn",
    "self_attention",
    "cross_attn",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "query",
    "key",
    "value",
    "c_attn",
    "query_key_value",
    "wq",
    "wk",
    "wv",
    "wo",
    "encdecattention",
    "selfattention",
}
_MLP = {
    "mlp",
    "ffn",
    "feed_forward",
    "intermediate",
    "fc1",
    "fc2",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
    "c_fc",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "w1",
    "w2",
    "w3",
    "densereludense",
    "experts",
    "block_sparse_moe",
    "wi",
    "wi_0",
    "wi_1",
}


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"\.", name.lower()) if w]


def tensor_kind(name: str) -> str:
    """The kind of a tensor, by its name (one of :data:`KINDS`)."""
    words = _words(name)
    parts = set(words) | {p for w in words for p in w.split("_")}
    if (
        set(words) & _NORM
        or parts & {"norm", "layernorm", "ln", "rmsnorm"}
        or any(w.endswith("norm") for w in words)
    ):
        return "norms"
    if set(words) & _EMBED or any("embed" in w for w in words):
        return "embeddings"
    if set(words) & _ATTN or "attn" in parts or "attention" in parts:
        return "attention"
    if set(words) & _MLP:
        return "mlp"
    split = split_layer_name(name)
    if split is not None and split.tail.startswith((".output.dense", ".output.")):
        return "mlp"  # BERT-style layer output after the intermediate projection
    return "other"


def layer_key(name: str) -> tuple[str, int] | None:
    """(stack head, layer index) of a tensor inside a layer stack, else None."""
    split = split_layer_name(name)
    return None if split is None else (split.head, split.index)
