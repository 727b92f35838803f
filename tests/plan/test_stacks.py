"""Models with several layer stacks: vision-language, encoder-decoder and dual encoders.

Tiny LLaVA, Qwen2-VL, T5, Whisper and CLIP pairs are built here. Slices address the language
model's stack (the decoder, or the text stack) and leave the others whole from the first
slice's model; gradients run over each stack's own depth; ``modules:`` address each stack.
Every output must load in transformers with no missing or unexpected keys, every tensor must
equal the one it was meant to come from, and each stack's layer count must be in the config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import load_tensors, write_recipe

_LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=64,
)


@dataclass(frozen=True)
class Family:
    """Two models of one multi-stack architecture and what each stack is called."""

    cls: Any
    a: Path
    b: Path
    lm: str  # the language model's stack head
    lm_key: str  # the config key counting it (dotted)
    post: tuple[str, ...]  # tensors after the language model's last layer
    other: str  # another stack's head
    other_key: str
    other_module: str  # its module name


def _configs() -> dict[str, tuple[Any, Any, tuple[str, ...], str, str, str, str, str, str]]:
    import transformers as T

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=16,
        patch_size=8,
    )
    return {
        "llava": (
            T.LlavaForConditionalGeneration,
            T.LlavaConfig(
                text_config=T.LlamaConfig(**_LLAMA),
                vision_config=T.CLIPVisionConfig(**vision),
                image_token_index=63,
                vocab_size=64,
            ),
            ("language_model.model.norm.weight", "language_model.lm_head.weight"),
            "language_model.model.layers.",
            "text_config.num_hidden_layers",
            "vision_tower.encoder.layers.",
            "vision_config.num_hidden_layers",
            "vision_tower",
            "text_decoder",
        ),
        "qwen2vl": (
            T.Qwen2VLForConditionalGeneration,
            T.Qwen2VLConfig(
                text_config=dict(
                    _LLAMA, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}
                ),
                vision_config=dict(
                    depth=2,
                    embed_dim=32,
                    hidden_size=32,
                    num_heads=4,
                    mlp_ratio=2,
                    patch_size=4,
                    spatial_merge_size=2,
                    temporal_patch_size=2,
                ),
                vocab_size=64,
                image_token_id=60,
                video_token_id=61,
                vision_start_token_id=62,
                bos_token_id=1,
                eos_token_id=2,
            ),
            ("model.norm.weight", "lm_head.weight"),
            "model.layers.",
            "text_config.num_hidden_layers",
            "visual.blocks.",
            "vision_config.depth",
            "vision_tower",
            "text_decoder",
        ),
        "t5": (
            T.T5ForConditionalGeneration,
            T.T5Config(
                vocab_size=64,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_decoder_layers=3,
                num_heads=4,
            ),
            ("decoder.final_layer_norm.weight",),
            "decoder.block.",
            "num_decoder_layers",
            "encoder.block.",
            "num_layers",
            "encoder",
            "decoder",
        ),
        "whisper": (
            T.WhisperForConditionalGeneration,
            T.WhisperConfig(
                vocab_size=64,
                d_model=32,
                encoder_layers=2,
                decoder_layers=3,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                num_mel_bins=8,
                max_source_positions=16,
                max_target_positions=32,
                decoder_start_token_id=1,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            ),
            ("model.decoder.layer_norm.weight", "model.decoder.layer_norm.bias"),
            "model.decoder.layers.",
            "decoder_layers",
            "model.encoder.layers.",
            "encoder_layers",
            "encoder",
            "decoder",
        ),
        "clip": (
            T.CLIPModel,
            T.CLIPConfig(
                text_config=dict(
                    vocab_size=64,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=3,
                    num_attention_heads=4,
                    max_position_embeddings=16,
                    bos_token_id=1,
                    eos_token_id=2,
                ),
                vision_config=vision,
                projection_dim=16,
            ),
            (
                "text_model.final_layer_norm.weight",
                "text_model.final_layer_norm.bias",
                "text_projection.weight",
                "logit_scale",
            ),
            "text_model.encoder.layers.",
            "text_config.num_hidden_layers",
            "vision_model.encoder.layers.",
            "vision_config.num_hidden_layers",
            "vision_tower",
            "text_encoder",
        ),
    }


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Family]:
    """Each architecture: models a and b, randomly initialised with different seeds."""
    root = tmp_path_factory.mktemp("stacks")
    out = {}
    for name, (cls, config, post, lm, lm_key, other, other_key, mod, _) in _configs().items():
        paths = []
        for seed, tag in ((1, "a"), (2, "b")):
            torch.manual_seed(seed)
            model = cls(config)
            with torch.no_grad():  # norms start at one: make every tensor differ
                for p in model.parameters():
                    p.add_(torch.randn(p.shape) * 0.02)
            paths.append(root / name / tag)
            model.save_pretrained(paths[-1])
        out[name] = Family(cls, paths[0], paths[1], lm, lm_key, post, other, other_key, mod)
    return out


NAMES = list(_configs())


def _get(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def _loads_cleanly(fam: Family, folder: Path) -> None:
    _, info = fam.cls.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info


@pytest.mark.parametrize("arch", NAMES)
def test_passthrough_slices_stack_the_language_model(arch, families, tmp_path, run_cli):
    fam = families[arch]
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: passthrough
slices:
  - sources: [{{model: {fam.a}, layer_range: [0, 2]}}]
  - sources: [{{model: {fam.b}, layer_range: [1, 3]}}]
""",
    )
    res = run_cli(recipe, tmp_path / "out")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    src = {"a": load_tensors(fam.a), "b": load_tensors(fam.b)}
    mapping = [("a", 0), ("a", 1), ("b", 1), ("b", 2)]
    expected: dict[str, tuple[str, str]] = {}
    for name in src["a"]:
        if name.startswith(fam.lm):
            continue
        expected[name] = ("b", name) if name in fam.post else ("a", name)
    for i, (tag, j) in enumerate(mapping):
        for name in src[tag]:
            if name.startswith(f"{fam.lm}{j}."):
                expected[f"{fam.lm}{i}.{name[len(f'{fam.lm}{j}.') :]}"] = (tag, name)
    assert set(out) == set(expected)
    for name, (tag, src_name) in expected.items():
        assert torch.equal(out[name], src[tag][src_name]), name
    assert set(fam.post) <= set(out)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert _get(config, fam.lm_key) == 4
    assert _get(config, fam.other_key) == 2
    _loads_cleanly(fam, tmp_path / "out")


@pytest.mark.parametrize("arch", NAMES)
def test_models_gradient_runs_over_each_stacks_own_depth(arch, families, tmp_path, run_cli):
    fam = families[arch]
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: linear
models:
  - {{model: {fam.a}, parameters: {{weight: [1.0, 0.0]}}}}
  - {{model: {fam.b}, parameters: {{weight: [0.0, 1.0]}}}}
dtype: float32
""",
    )
    res = run_cli(recipe, tmp_path / "out")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    a, b = load_tensors(fam.a), load_tensors(fam.b)
    assert set(out) == set(a)
    for head, depth in ((fam.lm, 3), (fam.other, 2)):
        for name in a:
            if not name.startswith(head):
                continue
            layer = int(name[len(head) :].split(".")[0])
            t = layer / (depth - 1)
            want = (1 - t) * a[name] + t * b[name]
            if t in (0.0, 1.0):  # weights 1 and 0: exactly one model's tensor
                assert torch.equal(out[name], a[name] if t == 0 else b[name]), name
            else:
                torch.testing.assert_close(out[name], want, rtol=1e-6, atol=1e-7)
    for name in a:  # outside the layers a gradient is read at t = 0
        if not name.startswith((fam.lm, fam.other)):
            assert torch.equal(out[name], a[name]), name
    _loads_cleanly(fam, tmp_path / "out")


_OTHER_POST = {
    "qwen2vl": "visual.merger.",
    "t5": "encoder.final_layer_norm.",
    "whisper": "model.encoder.layer_norm.",
}


@pytest.mark.parametrize("arch", list(_OTHER_POST))
def test_modules_address_each_stack(arch, families, tmp_path, run_cli):
    fam = families[arch]
    lm_module = _configs()[arch][8]
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: passthrough
modules:
  {lm_module}:
    slices:
      - sources: [{{model: {fam.b}, layer_range: [0, 1]}}]
  {fam.other_module}:
    slices:
      - sources: [{{model: {fam.b}, layer_range: [0, 2]}}]
      - sources: [{{model: {fam.a}, layer_range: [1, 2]}}]
""",
    )
    res = run_cli(recipe, tmp_path / "out")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    a, b = load_tensors(fam.a), load_tensors(fam.b)
    other = [("b", 0), ("b", 1), ("a", 1)]
    src = {"a": a, "b": b}
    for name, value in out.items():
        if name.startswith(fam.lm):
            assert int(name[len(fam.lm) :].split(".")[0]) == 0
            assert torch.equal(value, b[name]), name
        elif name.startswith(fam.other):
            i, _, tail = name[len(fam.other) :].partition(".")
            tag, j = other[int(i)]
            assert torch.equal(value, src[tag][f"{fam.other}{j}.{tail}"]), name
        else:  # before the first layer: the first slice's; after the last: the last's
            tag = "a" if name.startswith(_OTHER_POST[arch]) else "b"
            assert torch.equal(value, src[tag][name]), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (_get(config, fam.lm_key), _get(config, fam.other_key)) == (1, 3)
    _loads_cleanly(fam, tmp_path / "out")


def test_modules_errors_name_the_stacks(families, tmp_path, run_cli):
    fam = families["qwen2vl"]
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: passthrough
modules:
  vision:
    models: [{{model: {fam.a}}}]
""",
    )
    res = run_cli(recipe, tmp_path / "out")
    assert res.code == 2
    assert (
        f"recipe.yaml:5: modules.vision: model '{fam.a}' has no module 'vision'; its "
        "modules (layer stacks): 'text_decoder', 'vision_tower'" in res.err
    )
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: passthrough
modules:
  text_decoder:
    models: [{{model: {fam.a}}}]
""",
    )
    res = run_cli(recipe, tmp_path / "out")
    assert res.code == 2
    assert "missing: 'vision_tower'" in res.err
    assert not (tmp_path / "out").exists()


def test_ambiguous_stacks_refuse_slices(tmp_path, run_cli):
    from safetensors.torch import save_file

    model = tmp_path / "two"
    model.mkdir()
    save_file(
        {f"{p}.layers.{i}.w": torch.ones(2) for p in ("left", "right") for i in (0, 1)},
        model / "model.safetensors",
    )
    (model / "config.json").write_text(json.dumps({"num_layers": 2}))
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: passthrough
slices:
  - sources: [{{model: {model}, layer_range: [0, 1]}}]
""",
    )
    res = run_cli(recipe, tmp_path / "out")
    assert res.code == 2
    assert (
        "has several layer stacks ('left.layers' (left.layers.0-1), 'right.layers' "
        "(right.layers.0-1)) and none is the language model's" in res.err
    )


@pytest.mark.parametrize(
    ("arch", "module", "prefix"),
    [
        ("qwen2vl", "multi_modal_projector", "visual.merger."),
        ("llava", "multi_modal_projector", "multi_modal_projector."),
        ("t5", "shared", "shared."),
    ],
)
def test_modules_without_layers_take_their_own_models(
    arch, module, prefix, families, tmp_path, run_cli
):
    fam = families[arch]
    lm_module = _configs()[arch][8]
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: passthrough
modules:
  {lm_module}: {{slices: [{{sources: [{{model: {fam.a}, layer_range: [0, 3]}}]}}]}}
  {fam.other_module}: {{models: [{{model: {fam.a}}}]}}
  {module}: {{models: [{{model: {fam.b}}}]}}
""",
    )
    res = run_cli(recipe, tmp_path / "out")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    a, b = load_tensors(fam.a), load_tensors(fam.b)
    assert set(out) == set(a)
    assert any(n.startswith(prefix) for n in out)
    for name, value in out.items():
        assert torch.equal(value, (b if name.startswith(prefix) else a)[name]), name
    _loads_cleanly(fam, tmp_path / "out")


def test_modules_recipe_validates_like_mergekit(tmp_path):
    from mergekit_like.errors import RecipeError
    from mergekit_like.recipe.loading import load_recipe

    ok = load_recipe(
        write_recipe(
            tmp_path,
            """
merge_method: linear
modules:
  text_decoder:
    slices:
      - sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 2]}]
    parameters: {weight: 0.5}
  vision_tower:
    models: [{model: b}, {model: c}]
""",
        ),
        ["modules.vision_tower.models.1.model=d"],
    ).recipe
    assert ok.referenced_models() == ["a", "b", "d"]
    assert ok.modules is not None and ok.modules["text_decoder"].parameters == {"weight": 0.5}
    for body, want in [
        ("modules:\n  x: {}\n", "recipe.yaml:3: modules.x: give exactly one of 'models' or"),
        (
            "modules:\n  x: {models: [{model: a}], layers: 2}\n",
            "recipe.yaml:3: modules.x.layers: unknown key",
        ),
        (
            "models: [{model: a}]\nmodules:\n  x: {models: [{model: a}]}\n",
            "give exactly one of 'models' or 'slices' (or 'modules')",
        ),
    ]:
        with pytest.raises(RecipeError) as exc:
            load_recipe(write_recipe(tmp_path, f"merge_method: linear\n{body}"))
        assert want in str(exc.value.problems[0]), exc.value.problems
