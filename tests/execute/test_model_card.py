"""The model card and merge_recipe.yaml say how to reproduce a run and what was merged
(issue 16, point 13)."""

from __future__ import annotations

import shlex
import shutil

import pytest
import yaml

import mergekit_like
from mergekit_like.execute.model_card import METHOD_PAPERS, model_kind
from mergekit_like.recipe.models import Recipe
from tests.soups.conftest import make_ingredients


@pytest.fixture
def hub_math(tmp_path, llama_family, monkeypatch) -> str:
    """llama_family's math model as the hub id acme/tiny-math, in a local HF cache."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-math"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(llama_family["math"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return "acme/tiny-math"


def _front(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_card_and_recipe_carry_seed_version_and_command(tmp_path, llama_family, hub_math, run_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: dare_ties\nbase_model: {llama_family['base']}\n"
        f"models:\n  - model: {hub_math}\n    parameters: {{weight: 0.5, "
        f"density: 0.5}}\n  - model: {llama_family['code']}\n"
        f"    parameters: {{weight: 0.5, density: 0.5}}\n"
    )
    args = [
        str(recipe),
        str(tmp_path / "out"),
        "--seed",
        "7",
        "--quiet",
        "models.0.parameters.density=0.6",
    ]
    r = run_cli(*args)
    assert r.code == 0, r.err
    out = tmp_path / "out"
    saved = (out / "merge_recipe.yaml").read_text()
    # OUT stands for the output folder; --quiet does not change the output
    command = shlex.join(
        ["merge", str(recipe), "OUT", "--seed", "7", "models.0.parameters.density=0.6"]
    )
    assert f"mergekit_like {mergekit_like.__version__}" in saved
    assert "seed 7" in saved and command in saved
    recipe_back = Recipe.model_validate(yaml.safe_load(saved))  # still a runnable recipe
    assert recipe_back.models[0].parameters["density"] == 0.6
    card = (out / "README.md").read_text()
    assert f"mergekit_like {mergekit_like.__version__}" in card and command in card
    assert "--seed 7" in card
    again = run_cli(*args[:1], tmp_path / "b" / "out", "--force", *args[2:], "--num-processes", "1")
    assert again.code == 0, again.err
    assert (tmp_path / "b" / "out" / "README.md").read_text() == card  # same output, same card
    front = _front(card)
    assert front["base_model"] == [hub_math]  # hub ids only, as written; local paths are not
    assert front["pipeline_tag"] == "text-generation"
    assert "causal language models" in card
    assert f"[{hub_math}](https://huggingface.co/{hub_math})" in card
    assert f"`{llama_family['code']}` (local folder)" in card
    assert f"`{llama_family['base']}` (local folder)" in card
    assert "https://arxiv.org/abs/2311.03099" in card  # DARE
    assert "https://arxiv.org/abs/2306.01708" in card  # TIES, whose sign election dare_ties uses


def test_local_only_merge_has_no_base_model_metadata(tmp_path, llama_family, run_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels: [{{model: {llama_family['math']}}}, "
        f"{{model: {llama_family['code']}}}]\n"
    )
    assert run_cli(recipe, tmp_path / "soup", "--quiet").code == 0
    card = (tmp_path / "soup" / "README.md").read_text()
    assert "base_model" not in _front(card)
    assert "https://arxiv.org/abs/2203.05482" in card  # model soups


def test_image_classifier_card_says_so(tmp_path, run_cli):
    a, b = make_ingredients(tmp_path / "vit", [0.1, 0.2])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: task_arithmetic\nbase_model: {a}\nmodels: [{{model: {b}, "
        f"parameters: {{weight: 0.5}}}}]\n"
    )
    r = run_cli(recipe, tmp_path / "out", "--quiet")
    assert r.code == 0, r.err
    card = (tmp_path / "out" / "README.md").read_text()
    assert "image classification models" in card and "language model" not in card
    assert _front(card)["pipeline_tag"] == "image-classification"
    assert "https://arxiv.org/abs/2212.04089" in card


@pytest.mark.parametrize(
    ("config", "kind", "tag"),
    [
        (
            {"architectures": ["ViTForImageClassification"]},
            "image classification",
            "image-classification",
        ),
        ({"architectures": ["LlamaForCausalLM"]}, "causal language", "text-generation"),
        ({"architectures": ["GPT2LMHeadModel"]}, "causal language", "text-generation"),
        ({"architectures": ["BertForMaskedLM"]}, "masked language", "fill-mask"),
        (
            {"architectures": ["RobertaForSequenceClassification"]},
            "text classification",
            "text-classification",
        ),
        (
            {"architectures": ["Wav2Vec2ForCTC"]},
            "speech recognition",
            "automatic-speech-recognition",
        ),
        ({"model_type": "vit"}, "vit", None),
        ({}, None, None),
        ({"architectures": "oops"}, None, None),
    ],
)
def test_model_kind_from_config(config, kind, tag):
    assert model_kind(config) == (kind, tag)


def test_every_method_paper_link_is_checked():
    from mergekit_like.datamerge import DATAMERGE_METHODS
    from mergekit_like.methods import REGISTRY
    from mergekit_like.soups import SOUP_METHODS

    expected = {  # arXiv ids as checked against the papers' abstract pages
        "linear": "2203.05482",
        "greedy_soup": "2203.05482",
        "learned_soup": "2203.05482",
        "task_arithmetic": "2212.04089",
        "ties": "2306.01708",
        "dare_linear": "2311.03099",
        "dare_ties": "2311.03099",
        "breadcrumbs": "2312.06795",
        "breadcrumbs_ties": "2312.06795",
        "della": "2406.11617",
        "della_linear": "2406.11617",
        "sce": "2408.07990",
        "model_stock": "2403.19522",
        "wise_ft": "2109.01903",
        "fisher": "2111.09832",
        "regmean": "2212.09849",
        "adamerging": "2310.02575",
    }
    for method, arxiv in expected.items():
        assert f"https://arxiv.org/abs/{arxiv}" == METHOD_PAPERS[method][0][1], method
    assert set(METHOD_PAPERS) <= {*REGISTRY, *SOUP_METHODS, *DATAMERGE_METHODS}
