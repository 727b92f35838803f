"""The streaming executor: the read-ahead pipeline, row chunks, and identical bytes either way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergekit_like.execute.executor import ExecOptions, execute
from mergekit_like.execute.tensor_step import all_finite
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.writer import ShardWriter, layout_shards
from mergekit_like.plan.build import plan_from_file
from tests.conftest import load_tensors, write_recipe


def merge_with(recipe: Path, out: Path, options: ExecOptions) -> dict[str, bytes]:
    """Execute a recipe into ``out`` with ``options``; the bytes of every output file."""
    plan = plan_from_file(recipe)
    out.mkdir()
    writer = ShardWriter(out, layout_shards([(t.name, t.dtype, t.shape) for t in plan.tensors],
                                            10**9))
    with TensorReader() as reader:
        execute(plan, reader, writer, options)
    writer.finish()
    return {f.name: f.read_bytes() for f in sorted(out.iterdir())}


def chunked_equals_whole(recipe: Path, tmp_path: Path) -> bool:
    """Whether merging in 200-byte row chunks writes the same bytes as merging whole."""
    chunked = merge_with(recipe, tmp_path / "c", ExecOptions(chunk_bytes=200, progress=False))
    whole = merge_with(recipe, tmp_path / "w", ExecOptions(chunk_bytes=2**30, progress=False))
    return chunked == whole



def test_prefetch_gives_byte_identical_output(tmp_path, ties_recipe):
    a = merge_with(ties_recipe, tmp_path / "a", ExecOptions(prefetch=True, progress=False))
    b = merge_with(ties_recipe, tmp_path / "b", ExecOptions(prefetch=False, progress=False))
    assert a == b


def test_compiled_kernels_write_the_eager_bytes(tmp_path, ties_recipe):
    eager = merge_with(ties_recipe, tmp_path / "e", ExecOptions(kernels="eager", progress=False))
    for chunk in (200, 2**30):
        options = ExecOptions(kernels="compiled", chunk_bytes=chunk, progress=False)
        assert merge_with(ties_recipe, tmp_path / f"c{chunk}", options) == eager


def test_rounds_a_bracket_settled_are_never_read(tmp_path, ties_recipe, monkeypatch):
    """The first chunk of a later statistics round is not read ahead before the round
    before ends; when the round is wanted after all, the compute thread reads it."""
    import mergekit_like.execute.executor as execute_module
    import mergekit_like.execute.placement as placement_module

    reads: list[tuple[str, int]] = []
    load = execute_module.load_inputs

    def counting(plan, step, compute, read):  # noqa: ANN001, ANN202
        reads.append((step.pt.name, step.round))
        return load(plan, step, compute, read)

    monkeypatch.setattr(execute_module, "load_inputs", counting)
    monkeypatch.setattr(placement_module, "load_inputs", counting)
    rescaled = ties_recipe.with_name("rescaled.yaml")
    rescaled.write_text(ties_recipe.read_text() + "parameters: {rescale: true}\n")
    for recipe in (ties_recipe, rescaled):
        eager = merge_with(recipe, tmp_path / f"e-{recipe.stem}",
                           ExecOptions(kernels="eager", chunk_bytes=200, prefetch=False,
                                       progress=False))
        reads.clear()
        options = ExecOptions(kernels="compiled", chunk_bytes=200, progress=False)
        assert merge_with(recipe, tmp_path / f"c-{recipe.stem}", options) == eager
        later = {r for _, r in reads if r > 0}
        if recipe is ties_recipe:
            assert reads and later == set()  # the bracket round settled every window
        else:
            # the L1 round, after two bracket rounds, two radix ones and the tie replay
            # round (wanted only where a cut falls among equal magnitudes: not here)
            assert later == {5}


def test_row_chunks_give_the_linear_formula_byte_for_byte(tmp_path, llama_family):
    recipe = write_recipe(tmp_path, f"""
merge_method: linear
models:
  - model: {llama_family['math']}
    parameters: {{weight: 0.2}}
  - model: {llama_family['code']}
    parameters: {{weight: 0.3}}
  - model: {llama_family['chat']}
    parameters: {{weight: 0.5}}
""")
    # 256 bytes per input: every matrix is split into many row chunks
    chunked = merge_with(recipe, tmp_path / "c", ExecOptions(chunk_bytes=256, progress=False))
    whole = merge_with(recipe, tmp_path / "w", ExecOptions(chunk_bytes=2**30, progress=False))
    assert chunked == whole
    got = load_tensors(tmp_path / "c")
    a, b, c = (load_tensors(llama_family[n]) for n in ("math", "code", "chat"))
    for name, t in got.items():
        want = (0.2 * a[name].float() + 0.3 * b[name].float() + 0.5 * c[name].float())
        torch.testing.assert_close(t.float(), want.to(t.dtype).float())


def test_skipped_tensors_are_not_computed_but_still_rank_the_whole_model(tmp_path, llama_family):
    # a resumed run: model_wide_trim's thresholds come from every tensor of the plan, so a
    # tensor computed alone (the rest skipped) gets the bytes of the uninterrupted run
    recipe = write_recipe(tmp_path, f"""
merge_method: ties
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
    parameters: {{density: 0.3}}
  - model: {llama_family['code']}
    parameters: {{density: 0.6}}
parameters: {{model_wide_trim: true}}
dtype: float32
""")
    full = merge_with(recipe, tmp_path / "full", ExecOptions(progress=False))
    plan = plan_from_file(recipe)
    target = "model.layers.1.mlp.up_proj.weight"
    skip = frozenset(t.name for t in plan.tensors) - {target}
    layout = layout_shards([(t.name, t.dtype, t.shape) for t in plan.tensors], 10**9)
    (tmp_path / "one").mkdir()
    writer = ShardWriter(tmp_path / "one", layout, done=skip)
    seen: list[str] = []
    with TensorReader() as reader:
        execute(plan, reader, writer, ExecOptions(progress=False), on_tensor=lambda pt:
                seen.append(pt.name), skip=skip)
    writer.finish()
    assert seen == [target]
    slot = layout.slots[target]
    got = (tmp_path / "one" / "model.safetensors").read_bytes()[slot.start:slot.end]
    assert got == full["model.safetensors"][slot.start:slot.end]
    assert got != bytes(slot.end - slot.start)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_all_finite_finds_nan_and_inf_wherever_they_are(dtype):
    t = torch.linspace(-3, 3, 1000).to(dtype)
    assert all_finite(t) and all_finite(t[:0])
    for bad in ([float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")]):
        u = t.clone()
        u[[7, 993][: len(bad)]] = torch.tensor(bad, dtype=dtype)
        assert not all_finite(u)
    # finite entries whose sum overflows are still finite
    big = torch.full((64,), torch.finfo(dtype).max, dtype=dtype)
    assert all_finite(big)


WHOLE_TENSOR_METHODS = {  # methods that need figures over the whole tensor before a chunk
    "ties": "{weight: 1.0, density: 0.5}",
    "breadcrumbs": "{weight: 1.0, density: 0.6, gamma: 0.1}",
    "breadcrumbs_ties": "{weight: 1.0, density: 0.6, gamma: 0.1}",
    "dare_ties": "{weight: 1.0, density: 0.5}",
    "dare_linear": "{weight: 0.7, density: 0.4}",
    "della": "{weight: 1.0, density: 0.5, epsilon: 0.2}",
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rescale", [None, True])
@pytest.mark.parametrize("method", sorted(WHOLE_TENSOR_METHODS))
def test_row_chunks_after_statistics_passes_give_the_whole_tensor_bytes(
        tmp_path, llama_family, method, rescale, dtype):
    """Trim thresholds, L1 norms and random draws gathered chunk by chunk: same bytes.

    In bfloat16 the task vectors hold many equal magnitudes, so the rank windows' ties are
    broken across chunk boundaries."""
    params = WHOLE_TENSOR_METHODS[method]
    extra = "" if rescale is None else f"parameters: {{rescale: {str(rescale).lower()}}}\n"
    recipe = write_recipe(tmp_path, f"""
merge_method: {method}
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
    parameters: {params}
  - model: {llama_family['code']}
    parameters: {params}
dtype: {dtype}
{extra}""")
    assert chunked_equals_whole(recipe, tmp_path)


def test_slerp_in_row_chunks_gives_the_whole_tensor_bytes(tmp_path, llama_family):
    recipe = write_recipe(tmp_path, f"""
merge_method: slerp
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
parameters: {{t: 0.3}}
""")
    assert chunked_equals_whole(recipe, tmp_path)


@pytest.mark.parametrize("base", [False, True])
@pytest.mark.parametrize("mode", ["{}", "{nuslerp_flatten: false}",
                                  "{nuslerp_flatten: false, nuslerp_row_wise: true}"])
def test_nuslerp_in_row_chunks_gives_the_whole_tensor_bytes(tmp_path, llama_family, mode, base):
    recipe = write_recipe(tmp_path, f"""
merge_method: nuslerp
{f"base_model: {llama_family['base']}" if base else ""}
models:
  - model: {llama_family['math']}
    parameters: {{weight: 0.7}}
  - model: {llama_family['code']}
    parameters: {{weight: 0.3}}
parameters: {mode}
""")
    assert chunked_equals_whole(recipe, tmp_path)


def row_wise_nuslerp_recipe(tmp_path: Path, family: dict[str, Path], base: bool) -> Path:
    """Row-wise nuslerp over copies of ``family``'s base, math and code with one more tensor,
    taller than a 4096-row sum block (``extra.tall``)."""
    import shutil

    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(5)
    models = {}
    for name in ("base", "math", "code"):
        folder = tmp_path / name
        shutil.copytree(family[name], folder)
        tensors = load_tensors(folder)
        tensors["extra.tall"] = torch.randn(2 * 4096 + 50, 4, generator=gen)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        models[name] = folder
    return write_recipe(tmp_path, f"""
merge_method: nuslerp
{f"base_model: {models['base']}" if base else ""}
models:
  - model: {models['math']}
    parameters: {{weight: 0.7}}
  - model: {models['code']}
    parameters: {{weight: 0.3}}
parameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}
""")


@pytest.mark.parametrize("base", [False, True])
def test_nuslerp_row_wise_streams_tall_tensors(tmp_path, llama_family, base):
    """A tall tensor whose vectors run along dim 0: merged whole whatever --chunk-size
    (mergekit reduces it in one torch call), so the bytes are the whole tensor's."""
    assert chunked_equals_whole(row_wise_nuslerp_recipe(tmp_path, llama_family, base), tmp_path)


@pytest.mark.parametrize("base", [False, True])
@pytest.mark.parametrize("method", ["multislerp", "karcher"])
def test_gram_methods_in_row_chunks_give_the_whole_tensor_bytes(tmp_path, llama_family, method,
                                                                 base):
    weights = {"math": 0.5, "code": 0.3, "chat": 0.2}
    models = "\n".join(f"  - model: {llama_family[m]}" + (
        f"\n    parameters: {{weight: {w}}}" if method == "multislerp" else "")
        for m, w in weights.items())
    recipe = write_recipe(tmp_path, f"""
merge_method: {method}
{f"base_model: {llama_family['base']}" if base else ""}
models:
{models}
""")
    assert chunked_equals_whole(recipe, tmp_path)


def base_and_three(tmp_path: Path, family: dict[str, Path], method: str, parameters: str,
                   extra: str = "") -> Path:
    """``method`` over family's base and its three fine-tunes, with global ``parameters``."""
    return write_recipe(tmp_path, f"""
merge_method: {method}
base_model: {family['base']}
models:
  - model: {family['math']}
  - model: {family['code']}
  - model: {family['chat']}
parameters: {parameters}
{extra}""")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("topk", [1.0, 0.5, 0.0])
def test_sce_in_row_chunks_gives_the_whole_tensor_bytes(tmp_path, llama_family, topk, dtype):
    """The variance window's ties (many in bfloat16) are ranked across chunk boundaries."""
    recipe = base_and_three(tmp_path, llama_family, "sce", f"{{select_topk: {topk}}}",
                            f"dtype: {dtype}\n")
    assert chunked_equals_whole(recipe, tmp_path)


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_in_row_chunks_gives_the_whole_tensor_bytes(tmp_path, llama_family,
                                                                filter_wise):
    recipe = base_and_three(tmp_path, llama_family, "model_stock",
                            f"{{filter_wise: {str(filter_wise).lower()}}}")
    assert chunked_equals_whole(recipe, tmp_path)


def test_a_failing_statistics_pass_names_the_tensor_and_method(tmp_path, llama_family,
                                                               monkeypatch):
    from mergekit_like.errors import MergeError
    from mergekit_like.methods import model_stock

    def fail(self, round_):
        raise ValueError("the fine-tunes point in opposite directions\nmore")

    monkeypatch.setattr(model_stock.ModelStockStats, "finish", fail)
    recipe = write_recipe(tmp_path, f"""
merge_method: model_stock
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
  - model: {llama_family['code']}
""")
    with pytest.raises(MergeError, match=r"^tensor '.*': merge method 'model_stock' failed: "
                       r"the fine-tunes point in opposite directions$"):
        merge_with(recipe, tmp_path / "c", ExecOptions(chunk_bytes=200, progress=False))
