"""The streamed merge phase gives the same bytes as the whole-tensor merge it replaced.

The sha256 values below were recorded from main's output (commit 8e1813c: every ingredient
tensor and statistic read whole, merged with ``solve.fisher_merge`` / ``regmean_merge``)
on the tiny ViT ingredients of conftest. The streamed merge reads one ingredient at a time
and large tensors in row chunks; the chunk size is forced down here so that every
tensor of the tiny model is cut into several chunks.
"""

from __future__ import annotations

import hashlib

import pytest

from mergekit_like.datamerge import stream
from tests.datamerge.conftest import recipe_text

MAIN_SHA256 = {
    "fisher": "d588c00b8b2746963bd4ac6b77368ed79d44411554e426d920aea5296d99b693",
    "fisher_eps0": "fbec384a716f8589995b5b8274d093947d012aa4bed333ad8831ef0828cbb199",
    "regmean": "05ae2ed5dd75484e0e29d365b8880bc5d91a7a1d148043cebcaa675fa2bb147a",
    "regmean_pp": "f555f3bde5bdda6c75a367d8920792991edd8e7760b53c9fac8b2389c264cc4e",
}
RECIPES = {
    "fisher": ("fisher", "epsilon: 1e-10", [1.0, 2.0, 0.5]),
    "fisher_eps0": ("fisher", "epsilon: 0.0", [1.0, 2.0, 0.5]),
    "regmean": ("regmean", "alpha: 0.9", None),
    "regmean_pp": ("regmean", "alpha: 0.9\nplusplus: true", None),
}


def _sha(out) -> str:  # noqa: ANN001 - a Path
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(RECIPES))
@pytest.mark.parametrize("chunk_bytes", [None, 64])
def test_same_bytes_as_main(vit_setup, run_merge, monkeypatch, case, chunk_bytes) -> None:
    folders, data = vit_setup
    if chunk_bytes is not None:
        monkeypatch.setattr(stream, "CHUNK_BYTES", chunk_bytes)
    method, options, weights = RECIPES[case]
    out = run_merge(recipe_text(method, folders, data, options, weights=weights))
    assert _sha(out) == MAIN_SHA256[case]
