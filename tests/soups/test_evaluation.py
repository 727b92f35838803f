"""Built-in evaluators against formulas: classification (accuracy, loss, ensemble) on a tiny
ViT, and perplexity of a merge scored after it is written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import write_recipe

N = 24


@pytest.fixture
def npz_data(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("val", "test"):
        arrays[f"{split}_inputs"] = rng.standard_normal((N, 1, 4, 4)).astype(np.float32)
        arrays[f"{split}_labels"] = rng.integers(0, 3, N)
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path, arrays


def logits_of(folder, x):
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x)).logits


def test_classification_scores_and_ensemble(tmp_path, ingredients, npz_data, run_cli):
    models = ingredients([0.75, 0.5, 1.0])
    data, arrays = npz_data
    lines = ["merge_method: greedy_soup", "models:"] + [f"  - model: {m}" for m in models]
    lines += ["evaluation:", "  task: classification", f"  data: {data}", "  batch_size: 7"]
    out = tmp_path / "out"
    res = run_cli(write_recipe(tmp_path, "\n".join(lines) + "\n"), out, "--quiet")
    assert res.code == 0, res.err
    report = json.loads((out / "soup_report.json").read_text())
    labels = {s: torch.from_numpy(arrays[f"{s}_labels"]) for s in ("val", "test")}
    logits = {(i, s): logits_of(m, arrays[f"{s}_inputs"])
              for i, m in enumerate(models) for s in ("val", "test")}

    def acc(lg, s):
        return (lg.argmax(-1) == labels[s]).double().mean().item()

    def loss(lg, s):
        return F.cross_entropy(lg, labels[s]).item()

    for i, got in enumerate(report["ingredients"]):
        for s in ("val", "test"):
            assert got[s] == pytest.approx(acc(logits[i, s], s), abs=1e-6)
            assert got[f"{s}_loss"] == pytest.approx(loss(logits[i, s], s), rel=1e-4)
    rows = {r["name"]: r for r in report["table"]}
    for s in ("val", "test"):
        mean = sum(logits[i, s] for i in range(3)) / 3
        assert rows["ensemble"][s] == pytest.approx(acc(mean, s), abs=1e-6)
        assert rows["ensemble"][f"{s}_loss"] == pytest.approx(loss(mean, s), rel=1e-4)
        soup = logits_of(out, arrays[f"{s}_inputs"])
        assert rows["greedy soup"][s] == pytest.approx(acc(soup, s), abs=1e-6)
        assert rows["greedy soup"][f"{s}_loss"] == pytest.approx(loss(soup, s), rel=1e-4)
    assert report["metric"] == "accuracy" and report["higher_is_better"] is True
    ens = report["curves"]["ensemble"]
    assert [p[0] for p in ens] == [1.0, 2.0, 3.0]


def test_jsonl_and_npz_give_the_same_split(tmp_path, npz_data):
    from mergekit_like.recipe.soups import EvaluationConfig
    from mergekit_like.soups.data import load_split

    data, arrays = npz_data
    rows = [{"split": s, "inputs": arrays[f"{s}_inputs"][i].tolist(),
             "label": int(arrays[f"{s}_labels"][i])} for s in ("val", "test") for i in range(N)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for path in (data, jsonl):
        cfg = EvaluationConfig(task="classification", data=str(path), max_examples=10)
        split = load_split(cfg, "test", tmp_path, "pixel_values", None)
        assert len(split) == 10
        torch.testing.assert_close(split.inputs["pixel_values"],
                                   torch.from_numpy(arrays["test_inputs"][:10]))
        assert split.labels.tolist() == arrays["test_labels"][:10].tolist()


def test_perplexity_of_a_plain_merge(tmp_path, llama_family, run_cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = " ".join(f"w{(7 * i) % 60}" for i in range(70))
    (tmp_path / "val.txt").write_text(text)
    recipe = write_recipe(tmp_path, f"""
merge_method: linear
models:
  - model: {llama_family['math']}
  - model: {llama_family['code']}
evaluation:
  task: perplexity
  data: val.txt
  max_length: 16
""")
    out = tmp_path / "out"
    res = run_cli(recipe, out, "--quiet")
    assert res.code == 0, res.err
    got = json.loads((out / "eval_report.json").read_text())
    ids = AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"]
    blocks = torch.tensor(ids[: len(ids) // 16 * 16]).view(-1, 16)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(input_ids=blocks).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                          blocks[:, 1:].reshape(-1)).item()
    assert got["val_loss"] == pytest.approx(nll, rel=1e-4)
    assert got["val"] == pytest.approx(math.exp(nll), rel=1e-4)
    assert got["test"] is None and got["higher_is_better"] is False


def test_ensemble_method_reports_without_writing_a_model(tmp_path, ingredients, npz_data,
                                                         run_cli):
    models = ingredients([0.75, 0.5])
    data, arrays = npz_data
    lines = ["merge_method: ensemble", "models:"] + [f"  - model: {m}" for m in models]
    lines += ["evaluation:", "  task: classification", f"  data: {data}"]
    out = tmp_path / "out"
    res = run_cli(write_recipe(tmp_path, "\n".join(lines) + "\n"), out, "--quiet")
    assert res.code == 0, res.err
    report = json.loads((out / "soup_report.json").read_text())
    assert report["written"] is False and not list(out.glob("*.safetensors"))
    labels = torch.from_numpy(arrays["test_labels"])
    mean = sum(logits_of(m, arrays["test_inputs"]) for m in models) / 2
    row = next(r for r in report["table"] if r["name"] == "ensemble")
    assert row["test"] == pytest.approx((mean.argmax(-1) == labels).double().mean().item())


def test_an_evaluation_that_fails_publishes_nothing(tmp_path, llama_family, run_cli):
    """The merge is written, then its evaluation fails: OUT stays as it was (absent, or the
    old one with --force), and the merged tensors are kept for --resume."""
    recipe = write_recipe(tmp_path, f"""
merge_method: linear
models:
  - model: {llama_family['math']}
  - model: {llama_family['code']}
evaluation:
  task: perplexity
  data: val.txt
  max_length: 16
""")
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    res = run_cli(recipe, out, "--quiet")
    assert res.code == 2 and len(res.err.splitlines()) == 1, res.err
    assert "val.txt" in res.err and f"kept in {partial}" in res.err and "--resume" in res.err
    assert not out.exists()
    out.mkdir()
    (out / "old.txt").write_text("the old output")
    res = run_cli(recipe, out, "--quiet", "--force", "--resume")
    assert res.code == 2 and not (out / "eval_report.json").exists()
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    (tmp_path / "val.txt").write_text(" ".join(f"w{(7 * i) % 60}" for i in range(70)))
    res = run_cli(recipe, out, "--quiet", "--force", "--resume")
    assert res.code == 0, res.err
    report = json.loads((out / "eval_report.json").read_text())
    assert report["val"] > 1 and not (out / "old.txt").exists() and not partial.exists()
    assert not (out / ".merge-journal").exists()
