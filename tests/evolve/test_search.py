"""merge evolve end to end on tiny ViTs: the chosen model is its recipe's merge, bit for bit;
the same seed gives the same search; a search stopped after a generation and resumed ends
as an uninterrupted one; the report holds every generation."""

from __future__ import annotations

import json

import pytest
import torch

from mergekit_like.errors import Interrupted
from mergekit_like.evolve.runner import EvolveOptions, run_evolve
from tests.evolve import scorers
from tests.evolve.conftest import BIASES, LAYER0, candidate_scores, config, evolve_config


def test_best_model_is_its_recipe_merged_bit_for_bit(baseline, tmp_path, run_cli):
    out, data = baseline
    again = tmp_path / "again"
    res = run_cli(out / "evolve_recipe.yaml", again, "--quiet")
    assert res.code == 0, res.err
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_best_score_is_the_formula_of_its_weights(baseline):
    out, data = baseline
    params = data["best"]["parameters"]  # one weight per (model, layer group), normalized
    w = [params[f"models[{m}].weight"] for m in range(3)]
    x = sum(w[m][1] * BIASES[m] for m in range(3)) / sum(w[m][1] for m in range(3))
    y = sum(w[m][0] * LAYER0[m] for m in range(3)) / sum(w[m][0] for m in range(3))
    expected = -((x - scorers.TARGET) ** 2) - (y - scorers.LAYER0_TARGET) ** 2
    torch.testing.assert_close(data["best"]["val"], expected, rtol=0, atol=1e-6)
    assert data["best"]["val"] == max(max(g) for g in candidate_scores(data))
    assert data["best"]["val"] == data["generations"][data["best"]["generation"]]["best"]["val"]


def test_report_has_every_generation_and_the_files(baseline):
    out, data = baseline
    saved = json.loads((out / "evolve_report.json").read_text())
    assert [g["generation"] for g in saved["generations"]] == [0, 1, 2]
    assert [len(g["candidates"]) for g in saved["generations"]] == [4, 4, 4]
    assert saved["evaluations"] == 12 and saved["parameters"] == 6
    best = [max(c["val"] for c in g["candidates"]) for g in saved["generations"]]
    assert [g["best"]["val"] for g in saved["generations"]] == best
    assert [g["best_so_far"] for g in saved["generations"]] == [
        max(best[:i + 1]) for i in range(3)]
    assert (out / "evolve_report.png").stat().st_size > 1000
    md = (out / "evolve_report.md").read_text()
    assert md.count("\n| ") == (1 + 3) + (1 + 3)  # header and row per generation, weight
    assert not (out / "evolve_state.pkl").exists() and not (out / "candidates").exists()


def test_same_seed_same_search_other_seed_other_search(baseline, tmp_path, vits):
    out, data = baseline
    again = run_evolve(config(tmp_path, vits), tmp_path / "out",
                       EvolveOptions(allow_code=True, quiet=True))
    assert candidate_scores(again) == candidate_scores(data)
    assert again["best"]["x"] == data["best"]["x"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == \
        (out / "model.safetensors").read_bytes()
    other = run_evolve(config(tmp_path, vits, "generations: 1\n  popsize: 4\n  seed: 8"),
                       tmp_path / "other", EvolveOptions(allow_code=True, quiet=True))
    assert candidate_scores(other)[0] != candidate_scores(data)[0]


def test_stopped_after_a_generation_resumes_to_the_same_result(baseline, tmp_path, vits,
                                                               run_cli):
    out, data = baseline

    def stop_after_first(entry: dict) -> None:
        if entry["generation"] == 0:
            raise KeyboardInterrupt

    cfg, target = config(tmp_path, vits), tmp_path / "out"
    with pytest.raises(Interrupted, match="--resume"):
        run_evolve(cfg, target, EvolveOptions(allow_code=True, quiet=True,
                                              on_generation=stop_after_first))
    assert not target.exists() and (tmp_path / ".out.partial" / "evolve_state.pkl").is_file()
    res = run_cli("evolve", cfg, target, "--allow-code")  # no --resume: refused, kept
    assert res.code == 2 and "--resume" in res.err
    res = run_cli("evolve", cfg, target, "--allow-code", "--resume")
    assert res.code == 0, res.err
    assert "resuming after generation 0" in res.out
    resumed = json.loads((target / "evolve_report.json").read_text())
    assert candidate_scores(resumed) == candidate_scores(data)
    assert resumed["best"]["x"] == data["best"]["x"]
    assert (target / "model.safetensors").read_bytes() == \
        (out / "model.safetensors").read_bytes()


def test_resume_refuses_another_config(baseline, tmp_path, vits, run_cli):
    def stop(entry: dict) -> None:
        raise KeyboardInterrupt

    cfg, target = config(tmp_path, vits), tmp_path / "out"
    with pytest.raises(Interrupted):
        run_evolve(cfg, target, EvolveOptions(allow_code=True, quiet=True, on_generation=stop))
    res = run_cli("evolve", cfg, target, "--allow-code", "--resume", "search.seed=9")
    assert res.code == 2
    assert "is the state of a search with another config or seed" in res.err
    assert (tmp_path / ".out.partial" / "evolve_state.pkl").is_file()


def test_dare_ties_genome_reproduces_with_its_seed(tmp_path, vits, run_cli):
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text(evolve_config(vits[1:], "dare_ties", vits[0], genome="layer_granularity: 1",
                                 search="generations: 1\n  popsize: 2"))
    res = run_cli("evolve", cfg, tmp_path / "out", "--allow-code", "--quiet", "--seed", "3")
    assert res.code == 0, res.err
    data = json.loads((tmp_path / "out" / "evolve_report.json").read_text())
    assert data["parameters"] == 2 * 3 * 2  # groups x models x (weight, density)
    recipe = (tmp_path / "out" / "evolve_recipe.yaml").read_text()
    assert "--seed 3" in recipe.splitlines()[1] and f"model: {vits[0]}" in recipe
    for seed, same in (("3", True), ("4", False)):
        again = tmp_path / f"again{seed}"
        res = run_cli(tmp_path / "out" / "evolve_recipe.yaml", again, "--quiet", "--seed", seed)
        assert res.code == 0, res.err
        equal = (again / "model.safetensors").read_bytes() == \
            (tmp_path / "out" / "model.safetensors").read_bytes()
        assert equal is same
