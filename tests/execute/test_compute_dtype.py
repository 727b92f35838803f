"""The compute dtype without a recipe ``dtype``: mergekit's rule, and its rounding.

mergekit computes each tensor in its inputs' promoted dtype (bfloat16 for bfloat16 models)
and writes the result in that dtype when ``out_dtype`` is absent. The expected bytes below
are mergekit's formulas written out with plain torch ops in its order.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergekit_like.plan.build import build_plan
from mergekit_like.recipe.loading import load_recipe
from tests.conftest import load_tensors, write_recipe

NAMES = ("math", "code", "chat")


def _as_dtype(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = {k: v.to(dtype).contiguous() for k, v in load_tensors(src).items()}
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def bf16_family(
    tmp_path_factory: pytest.TempPathFactory, llama_family: dict[str, Path]
) -> dict[str, Path]:
    """llama_family saved in bfloat16, plus its base in float32 (``base32``)."""
    root = tmp_path_factory.mktemp("bf16")
    out = {n: _as_dtype(llama_family[n], root / n, torch.bfloat16) for n in ("base", *NAMES)}
    out["base32"] = llama_family["base"]
    return out


def _models(fam: dict[str, Path], weights: tuple[float, ...], density: str = "") -> str:
    return "".join(
        f"  - model: {fam[n]}\n    parameters: {{weight: {w}{density}}}\n"
        for n, w in zip(NAMES, weights, strict=True)
    )


def test_plan_computes_and_writes_in_the_inputs_promoted_dtype(tmp_path, bf16_family):
    models = _models(bf16_family, (1.0, 1.0, 1.0))
    plain = write_recipe(
        tmp_path,
        f"merge_method: task_arithmetic\nbase_model: {bf16_family['base']}\nmodels:\n{models}",
        "a.yaml",
    )
    plan = build_plan(load_recipe(plain))
    assert {(t.compute, t.dtype) for t in plan.tensors} == {("BF16", "BF16")}
    assert plan.compute_dtype == "bfloat16"
    # a float32 base among bfloat16 fine-tunes: promoted to float32, and written so
    mixed = write_recipe(
        tmp_path,
        f"merge_method: task_arithmetic\nbase_model: {bf16_family['base32']}\nmodels:\n{models}",
        "b.yaml",
    )
    plan = build_plan(load_recipe(mixed))
    assert {(t.compute, t.dtype) for t in plan.tensors} == {("F32", "F32")}
    # the recipe's dtype wins, and is the output dtype without out_dtype
    given = write_recipe(tmp_path, plain.read_text() + "dtype: float32\n", "c.yaml")
    plan = build_plan(load_recipe(given))
    assert {(t.compute, t.dtype) for t in plan.tensors} == {("F32", "F32")}


def _inputs(fam: dict[str, Path]) -> tuple[dict, list[dict]]:
    return load_tensors(fam["base"]), [load_tensors(fam[n]) for n in NAMES]


@pytest.mark.parametrize("chunk", ["16MiB", "1KiB"])
def test_task_arithmetic_in_bfloat16_rounds_as_mergekit(tmp_path, run_cli, bf16_family, chunk):
    weights = (0.6, 0.3, 0.45)
    recipe = write_recipe(
        tmp_path,
        f"merge_method: task_arithmetic\nbase_model: "
        f"{bf16_family['base']}\nmodels:\n{_models(bf16_family, weights)}"
        "parameters: {normalize: true, lambda: 0.7}\n",
    )
    assert run_cli(recipe, tmp_path / "out", "--chunk-size", chunk).code == 0
    got = load_tensors(tmp_path / "out")
    base, fts = _inputs(bf16_family)
    for name, b in base.items():
        deltas = torch.stack([ft[name] - b for ft in fts])  # bfloat16 throughout
        w = torch.tensor(weights, dtype=deltas.dtype).view(-1, *[1] * b.dim())
        deltas.mul_(w)
        mixed = deltas.sum(dim=0)
        mixed /= w.sum(dim=0)
        mixed *= 0.7
        want = b + mixed
        assert got[name].dtype == torch.bfloat16
        assert torch.equal(got[name], want), name


def test_ties_sign_consensus_in_bfloat16_rounds_as_mergekit(tmp_path, run_cli, bf16_family):
    weights = (0.6, 0.3, 0.45)
    recipe = write_recipe(
        tmp_path,
        f"merge_method: ties\nbase_model: {bf16_family['base']}\n"
        f"models:\n{_models(bf16_family, weights, ', density: 1.0')}"
        "parameters: {normalize: true}\n",
    )
    assert run_cli(recipe, tmp_path / "out", "--chunk-size", "1KiB").code == 0
    got = load_tensors(tmp_path / "out")
    base, fts = _inputs(bf16_family)
    for name, b in base.items():
        deltas = torch.stack([ft[name] - b for ft in fts])
        w = torch.tensor(weights, dtype=deltas.dtype).view(-1, *[1] * b.dim())
        deltas.mul_(w)
        majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
        mask = deltas.sign() == majority
        mixed = (deltas * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
        mixed /= divisor
        assert torch.equal(got[name], b + mixed), name


def test_model_wide_trim_ranks_mixed_dtypes_in_one_compute_dtype(tmp_path, bf16_family):
    # the trim's bounds are ranked over every tensor at once: all in the widest dtype
    recipe = write_recipe(
        tmp_path,
        f"merge_method: ties\nbase_model: {bf16_family['base']}\n"
        f"models:\n  - model: {bf16_family['base32']}\n    parameters: "
        f"{{weight: 1.0, density: 0.5}}\n  - model: {bf16_family['math']}\n"
        "    parameters: {weight: 1.0, density: 0.5}\n"
        "parameters: {model_wide_trim: true}\n",
    )
    plan = build_plan(load_recipe(recipe))
    assert {t.compute for t in plan.tensors} == {"F32"}
    assert plan.compute_dtype == "float32"
