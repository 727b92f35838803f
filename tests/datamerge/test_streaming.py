"""The streamed merge phase gives the same bytes as the whole-tensor merge formulas.

The reference is computed here, tensor by tensor, from the ingredients' files read whole
and the statistics files the run cached (named by the report's keys), with
``solve.fisher_merge`` / ``regmean_merge``. The streamed merge reads one ingredient at a
time and large tensors in row chunks; the chunk size is forced down here so that every
tensor of the tiny model is cut into several chunks. (An earlier version pinned sha256
values of one run, which change with the transformers version that computes the
statistics.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_like.datamerge import solve, stream
from tests.datamerge.conftest import read_output, recipe_text

RECIPES = {
    "fisher": ("fisher", "epsilon: 1e-10", [1.0, 2.0, 0.5]),
    "fisher_eps0": ("fisher", "epsilon: 0.0", [1.0, 2.0, 0.5]),
    "regmean": ("regmean", "alpha: 0.9", None),
    "regmean_pp": ("regmean", "alpha: 0.9\nplusplus: true", None),
}


def _sha(out: Path) -> str:
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def _whole_merge(case: str, folders: list[Path], out: Path, cache: Path) -> dict:
    """Every tensor of the merge, from whole tensors and the cached statistics."""
    report = json.loads((out / "datamerge_report.json").read_text())
    stats = [load_file(cache / "stats" / f"{s['key']}.safetensors") for s in report["statistics"]]
    models = [load_file(f / "model.safetensors") for f in folders]
    _, _, weights = RECIPES[case]
    merged = {}
    for name in models[0]:
        tensors = [m[name] for m in models]
        if case.startswith("fisher"):
            eps = 1e-10 if case == "fisher" else 0.0
            fishers = [s.get(name) for s in stats]
            merged[name] = solve.fisher_merge(tensors, fishers, weights, eps)
        elif all(name in s for s in stats):
            merged[name] = solve.regmean_merge(tensors, [s[name] for s in stats], 0.9, False)
        else:
            merged[name] = solve.plain_mean(tensors)
    return merged


@pytest.mark.parametrize("case", ["fisher", "fisher_eps0", "regmean"])
@pytest.mark.parametrize("chunk_bytes", [None, 64])
def test_same_bytes_as_the_whole_tensor_formulas(
    vit_setup, run_merge, tmp_path, monkeypatch, case, chunk_bytes
) -> None:
    folders, data = vit_setup
    if chunk_bytes is not None:
        monkeypatch.setattr(stream, "CHUNK_BYTES", chunk_bytes)
    method, options, weights = RECIPES[case]
    out = run_merge(recipe_text(method, folders, data, options, weights=weights))
    got = read_output(out)
    want = _whole_merge(case, folders, out, tmp_path / "cache")
    assert set(got) == set(want)
    for name, tensor in want.items():
        expected = tensor.to(got[name].dtype)
        assert torch.equal(got[name], expected), name


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_chunking_does_not_change_a_byte(vit_setup, run_merge, monkeypatch, case) -> None:
    folders, data = vit_setup
    method, options, weights = RECIPES[case]
    text = recipe_text(method, folders, data, options, weights=weights)
    whole = _sha(run_merge(text))
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64)
    assert _sha(run_merge(text)) == whole
