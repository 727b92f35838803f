"""merge analyze: norms, cosines, angles and sign conflicts against numpy on the flattened
task vectors, computed here from the safetensors files themselves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mergekit_like.cli import main

DENSITIES = (0.1, 0.5, 1.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A tiny Llama base and three ingredients: base + seeded noise (the third also shares
    the first's direction, so the cosines differ)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("analyze")
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "base")
    base = LlamaForCausalLM.from_pretrained(root / "base").state_dict()
    gen = torch.Generator().manual_seed(7)
    noise = [{n: torch.randn(t.shape, generator=gen) for n, t in base.items()} for _ in range(3)]
    folders = [root / "base"]
    for k in range(3):
        state = {
            n: (t + 0.01 * (noise[k][n] + (noise[0][n] if k == 2 else 0))).contiguous()
            for n, t in base.items()
        }
        folder = root / f"ft{k}"
        folder.mkdir()
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text((root / "base" / "config.json").read_text())
        folders.append(folder)
    return folders


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {
        k: v.astype(np.float64).reshape(-1)
        for k, v in load_file(folder / "model.safetensors").items()
    }


def _trim(v: np.ndarray, density: float) -> np.ndarray:
    """TIES's trim of one tensor: keep the max(1, int(density * n)) largest magnitudes."""
    if density >= 1:
        return v.copy()
    k = max(1, int(density * v.size))
    out = np.zeros_like(v)
    top = np.argsort(-np.abs(v))[:k]
    out[top] = v[top]
    return out


def _expected(models: list[Path], select=lambda name: True) -> dict:
    base, fts = _tensors(models[0]), [_tensors(m) for m in models[1:]]
    names = sorted(n for n in base if select(n))
    flat = np.stack([np.concatenate([ft[n] - base[n] for n in names]) for ft in fts])
    norms = np.linalg.norm(flat, axis=1)
    cos = flat @ flat.T / np.outer(norms, norms)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    np.fill_diagonal(angle, 0.0)  # a vector's angle with itself (arccos(1 - eps) is not 0)
    out = {"norms": norms, "cos": cos, "angle": angle}
    for d in DENSITIES:
        trimmed = np.stack(
            [np.concatenate([_trim(ft[n] - base[n], d) for n in names]) for ft in fts]
        )
        nonzero = trimmed != 0
        two = nonzero.sum(0) >= 2
        mixed = (trimmed > 0).any(0) & (trimmed < 0).any(0)
        elected = np.where(trimmed.sum(0) >= 0, 1.0, -1.0)
        against = nonzero & (np.sign(trimmed) != elected)
        both01 = nonzero[0] & nonzero[1]
        out[d] = {
            "conflict": mixed.sum() / two.sum(),
            "ties": against.sum() / nonzero.sum(),
            "pair01": (both01 & (np.sign(trimmed[0]) != np.sign(trimmed[1]))).sum() / both01.sum(),
        }
    return out


def _check(group: dict, want: dict) -> None:
    np.testing.assert_allclose(group["norms"], want["norms"], rtol=1e-12)
    np.testing.assert_allclose(np.array(group["cosine"]), want["cos"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.array(group["angle_degrees"]), want["angle"], atol=1e-6)
    for d in DENSITIES:
        got = group["densities"][f"{d:g}"]
        assert math.isclose(got["sign_conflict"], want[d]["conflict"], rel_tol=1e-12)
        assert math.isclose(got["ties_disagreement"], want[d]["ties"], rel_tol=1e-12)
        assert math.isclose(got["pairwise_sign_conflict"][0][1], want[d]["pair01"], rel_tol=1e-12)


@pytest.fixture(scope="module")
def report(models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("analyze_out")
    recipe = root / "recipe.yaml"
    recipe.write_text(
        "merge_method: ties\nbase_model: "
        + str(models[0])
        + "\nmodels:\n"
        + "".join(f"  - model: {m}\n" for m in models[1:])
        + "parameters:\n  density: 0.5\n  weight: 1.0\n"
    )
    out = root / "out"
    dens = [str(d) for d in DENSITIES]
    assert main(["analyze", str(recipe), str(out), "--quiet", "--density", *dens]) == 0
    return json.loads((out / "analysis.json").read_text()), out


def test_overall_matches_numpy(models: list[Path], report: tuple[dict, Path]) -> None:
    data, out = report
    _check(data["overall"], _expected(models))
    assert data["models"] == [str(m) for m in models[1:]] and data["tensors_skipped"] == []
    assert (out / "analysis.md").read_text().startswith("# Task-vector analysis")
    for png in ("cosine_heatmap.png", "per_layer.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_layer_and_kind_match_numpy(models: list[Path], report: tuple[dict, Path]) -> None:
    data, _ = report
    layer1 = next(g for g in data["layers"] if g["layer"] == 1)
    assert layer1["stack"] == "model.layers."
    _check(layer1, _expected(models, lambda n: n.startswith("model.layers.1.")))
    _check(data["kinds"]["attention"], _expected(models, lambda n: "self_attn" in n))
    _check(data["kinds"]["mlp"], _expected(models, lambda n: ".mlp." in n))
    _check(
        data["kinds"]["embeddings"],
        _expected(models, lambda n: n in ("model.embed_tokens.weight", "lm_head.weight")),
    )
    _check(data["kinds"]["norms"], _expected(models, lambda n: "norm" in n))
    assert set(data["kinds"]) == {"attention", "mlp", "embeddings", "norms"}


def test_command_line_models(
    models: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--models/--base without OUT prints the Markdown report and writes nothing."""
    args = [
        "analyze",
        "--quiet",
        "--base",
        str(models[0]),
        "--models",
        *[str(m) for m in models[1:]],
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    cos01 = _expected(models)["cos"][0, 1]
    assert text.startswith("# Task-vector analysis") and f"{cos01:.4f}" in text


def test_bad_model_path_is_one_line(
    models: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: linear\nbase_model: {models[0]}\nmodels:\n"
        f"  - model: {models[1]}\n  - model: {tmp_path / 'nope'}\n"
    )
    assert main(["analyze", str(recipe), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models[1].model" in err[0] and "nope" in err[0], err
    assert not (tmp_path / "out").exists()
    assert (
        main(["analyze", "--quiet", "--base", str(tmp_path / "gone"), "--models", str(models[1])])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --base: "), err


def test_needs_a_base(
    models: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {models[1]}\n  - model: {models[2]}\n"
    )
    assert main(["analyze", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "base_model" in err[0], err


def test_out_inside_a_model_is_refused(models: list[Path], capsys) -> None:
    before = sorted(p.name for p in models[1].iterdir())
    args = [
        "analyze",
        str(models[1] / "report"),
        "--quiet",
        "--base",
        str(models[0]),
        "--models",
        str(models[1]),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside every model" in err[0], err
    assert sorted(p.name for p in models[1].iterdir()) == before
