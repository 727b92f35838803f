"""Layer recognition from tensor names."""

from __future__ import annotations

import pytest

from mergekit_like.layers import LayerName, layer_layout, split_layer_name


@pytest.mark.parametrize(("name", "expected"), [
    ("model.layers.12.mlp.up_proj.weight", LayerName("model.layers.", 12, ".mlp.up_proj.weight")),
    ("transformer.h.0.attn.c_attn.weight", LayerName("transformer.h.", 0, ".attn.c_attn.weight")),
    ("h.3.ln_1.bias", LayerName("h.", 3, ".ln_1.bias")),
    ("bert.encoder.layer.1.output.dense.weight",
     LayerName("bert.encoder.layer.", 1, ".output.dense.weight")),
    ("blocks.7.attn.qkv.weight", LayerName("blocks.", 7, ".attn.qkv.weight")),
    ("model.embed_tokens.weight", None),
    ("model.layers_norm.weight", None),
])
def test_split_layer_name(name, expected):
    assert split_layer_name(name) == expected
    if expected is not None:
        assert expected.with_index(expected.index) == name


def test_main_stack_is_the_largest():
    names = ["model.embed_tokens.weight",
             "model.layers.0.a.weight", "model.layers.0.b.weight",
             "model.layers.1.a.weight", "model.layers.1.b.weight",
             "vision.blocks.0.x.weight", "model.norm.weight"]
    layout = layer_layout(names)
    assert layout.head == "model.layers."
    assert layout.num_layers == 2
    assert layout.layers == ((".a.weight", ".b.weight"), (".a.weight", ".b.weight"))
    assert layout.other == ("model.embed_tokens.weight", "vision.blocks.0.x.weight",
                            "model.norm.weight")
    assert layout.layer_names(1) == ["model.layers.1.a.weight", "model.layers.1.b.weight"]


def test_no_layers():
    layout = layer_layout(["w", "b"])
    assert layout.head is None and layout.num_layers == 0 and layout.other == ("w", "b")
