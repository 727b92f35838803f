"""Layer recognition from tensor names."""

from __future__ import annotations

import pytest

from mergekit_like.plan.layers import LayerName, layer_layout, split_layer_name


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


def test_every_stack_is_found_and_the_language_model_is_main():
    names = ["model.embed_tokens.weight",
             "model.layers.0.a.weight", "model.layers.0.b.weight",
             "model.layers.1.a.weight", "model.layers.1.b.weight",
             "vision.blocks.0.x.weight", "vision.patch.weight", "model.norm.weight"]
    layout = layer_layout(names, {"num_hidden_layers": 2, "vision_config": {"depth": 1}})
    assert [s.head for s in layout.stacks] == ["model.layers.", "vision.blocks."]
    assert [s.config_keys for s in layout.stacks] == [("num_hidden_layers",),
                                                      ("vision_config.depth",)]
    assert layout.head == "model.layers."
    assert layout.num_layers == 2
    assert layout.layers == ((".a.weight", ".b.weight"), (".a.weight", ".b.weight"))
    assert layout.other == ("model.embed_tokens.weight", "vision.patch.weight",
                            "model.norm.weight")
    assert dict(layout.owner) == {"model.embed_tokens.weight": 0, "vision.patch.weight": 1,
                                  "model.norm.weight": 0}
    assert layout.layer_names(1) == ["model.layers.1.a.weight", "model.layers.1.b.weight"]
    assert layout.names() == ["text_decoder", "vision_tower"]


def test_t5_sub_layers_stay_inside_their_block():
    names = ["shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight",
             "encoder.block.0.layer.1.DenseReluDense.wi.weight",
             "encoder.block.1.layer.0.SelfAttention.q.weight",
             "decoder.block.0.layer.2.DenseReluDense.wi.weight",
             "decoder.final_layer_norm.weight"]
    layout = layer_layout(names, {"num_layers": 2, "num_decoder_layers": 1})
    enc, dec = layout.stacks
    assert (enc.head, enc.num_layers, enc.config_key) == ("encoder.block.", 2, "num_layers")
    assert enc.layers[0] == (".layer.0.SelfAttention.q.weight", ".layer.1.DenseReluDense.wi.weight")
    assert (dec.head, dec.num_layers, dec.config_key) == ("decoder.block.", 1,
                                                          "num_decoder_layers")
    assert layout.main_stack is dec
    assert layout.names() == ["encoder", "decoder"]


def test_no_layers():
    layout = layer_layout(["w", "b"])
    assert layout.head is None and layout.num_layers == 0 and layout.other == ("w", "b")
