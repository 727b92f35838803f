"""The output folder's safety: OUT never overlaps an input, one run per OUT (a lock on the
staging folder), and publishing only after every step succeeded."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.conftest import write_recipe


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "file", "link-inside", "contains"])
def test_out_overlapping_an_ingredient_is_refused_even_with_force(tmp_path, llama_family,
                                                                   run_cli, where):
    models = tmp_path / "models"
    ingredient = models / "m"
    shutil.copytree(llama_family["math"], ingredient)
    (tmp_path / "link").symlink_to(ingredient)
    out = {"same": ingredient, "inside": ingredient / "sub", "file":
           ingredient / "model.safetensors", "link-inside": tmp_path / "link" / "sub",
           "contains": models}[where]
    before = _tree(models)
    recipe = write_recipe(tmp_path, f"merge_method: linear\nmodels: [{{model: {ingredient}}}, "
                                    f"{{model: {llama_family['code']}}}]\n")
    for extra in ((), ("--force",)):
        res = run_cli(recipe, out, "--quiet", *extra)
        assert res.code == 2 and len(res.err.splitlines()) == 1, res.err
        assert "would overwrite ingredient model" in res.err
        assert _tree(models) == before
    assert sorted(p.name for p in models.iterdir()) == ["m"]
