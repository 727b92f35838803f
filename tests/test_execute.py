"""The streaming executor: the read-ahead pipeline, row chunks, and identical bytes either way."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mergekit_like.execute import (
    DEVICE_SLACK,
    ExecOptions,
    all_finite,
    estimate_peak_bytes,
    execute,
    fit_device,
    plan_steps,
    splittable,
    step_peaks,
)
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.writer import ShardWriter, layout_shards
from mergekit_like.plan import plan_from_file
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


@pytest.fixture
def ties_recipe(tmp_path, llama_family):
    return write_recipe(tmp_path, f"""
merge_method: ties
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {llama_family['code']}
    parameters: {{weight: 0.5, density: 0.7}}
dtype: float32
""")


def test_prefetch_gives_byte_identical_output(tmp_path, ties_recipe):
    a = merge_with(ties_recipe, tmp_path / "a", ExecOptions(prefetch=True, progress=False))
    b = merge_with(ties_recipe, tmp_path / "b", ExecOptions(prefetch=False, progress=False))
    assert a == b


def test_compiled_kernels_write_the_eager_bytes(tmp_path, ties_recipe):
    eager = merge_with(ties_recipe, tmp_path / "e", ExecOptions(kernels="eager", progress=False))
    for chunk in (200, 2**30):
        options = ExecOptions(kernels="compiled", chunk_bytes=chunk, progress=False)
        assert merge_with(ties_recipe, tmp_path / f"c{chunk}", options) == eager


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


def test_steps_cover_every_tensor_once(tmp_path, llama_family):
    recipe = write_recipe(tmp_path, f"""
merge_method: linear
models:
  - model: {llama_family['math']}
  - model: {llama_family['code']}
""")
    plan = plan_from_file(recipe)
    steps = plan_steps(plan, 4, 512)
    for pt in plan.tensors:
        mine = [s for s in steps if s.pt is pt]
        assert [s.last for s in mine] == [False] * (len(mine) - 1) + [True]
        if pt.shape:
            row_bytes = pt.nbytes // pt.shape[0]
            assert [s.rows for s in mine][0][0] == 0 and mine[-1].rows[1] == pt.shape[0]
            assert [s.offset for s in mine] == [s.rows[0] * row_bytes for s in mine]
            for s in mine:  # 2 inputs of (r1 - r0) rows in float32
                r0, r1 = s.rows
                assert s.in_bytes == 2 * (r1 - r0) * math.prod(pt.shape[1:]) * 4
    embed = next(pt for pt in plan.tensors if pt.name.endswith("embed_tokens.weight"))
    assert len([s for s in steps if s.pt is embed]) > 1  # 64 x 32 floats > 512 bytes


def test_peak_estimate_counts_the_step_read_ahead(tmp_path, llama_family):
    recipe = write_recipe(tmp_path, f"""
merge_method: linear
models:
  - model: {llama_family['math']}
  - model: {llama_family['code']}
dtype: float32
""")
    plan = plan_from_file(recipe)
    # the largest steps are 64 x 32 float32 matrices (8 KiB per input, 2 inputs). At
    # mlp.gate_proj: inputs + result + one temporary per input = 6 x 8 KiB, up_proj read
    # ahead (2 x 8 KiB), down_proj's result still being written (8 KiB)
    assert estimate_peak_bytes(plan, chunk_bytes=2**30) == 6 * 8192 + 2 * 8192 + 8192


@pytest.fixture
def nuslerp_family_recipe(tmp_path, llama_family):
    """A method that takes whole tensors (nuslerp) beside copies: fit_device's hard cases."""
    return write_recipe(tmp_path, f"""
merge_method: nuslerp
models:
  - model: {llama_family['math']}
    parameters: {{weight: 0.4}}
  - model: {llama_family['code']}
    parameters: {{weight: 0.6}}
dtype: float32
""")


def test_fit_device_without_a_limit_keeps_every_step_and_the_chunk(ties_recipe):
    plan = plan_from_file(ties_recipe)
    chunk, steps = fit_device(plan, 4096, None)
    assert chunk == 4096 and steps == plan_steps(plan, 4, 4096)
    assert not any(s.cpu for s in steps)


@pytest.mark.parametrize("limit", [30_000, 60_000, 10**9])
def test_fit_device_shrinks_chunks_until_every_split_step_fits(ties_recipe, limit, monkeypatch):
    monkeypatch.setattr("mergekit_like.execute.MIN_DEVICE_CHUNK", 64)
    plan = plan_from_file(ties_recipe)
    chunk, steps = fit_device(plan, 2**20, limit)
    peaks = step_peaks(steps, chunk)
    for step, peak in zip(steps, peaks, strict=True):  # what stays on the GPU fits
        assert step.cpu or peak * DEVICE_SLACK <= limit
    if chunk < 2**20:  # and the chunk is the largest power-of-two fraction that does
        twice = step_peaks(plan_steps(plan, 4, 2 * chunk), 2 * chunk)
        split = [splittable(s.pt) for s in plan_steps(plan, 4, 2 * chunk)]
        assert any(p * DEVICE_SLACK > limit for p, c in zip(twice, split, strict=True) if c)
    for pt in plan.tensors:  # a tensor's steps all run on one device; copies on the CPU
        flags = {s.cpu for s in steps if s.pt is pt}
        assert len(flags) == 1
        assert flags == {True} or pt.method != "copy"
    assert any(not s.cpu for s in steps)


def test_fit_device_sends_whole_tensors_that_cannot_fit_to_the_cpu(nuslerp_family_recipe):
    plan = plan_from_file(nuslerp_family_recipe)
    # nuslerp takes whole tensors. A 32 x 32 projection: 2 inputs of 4 KiB, working set
    # 6 x 4 KiB + the next projection read ahead (8 KiB) + the last result (4 KiB), times
    # the slack 1.25 = 45 KiB: fits 50 KB. The 64 x 32 matrices need twice that: they don't.
    chunk, steps = fit_device(plan, 4096, 50_000)
    big = {s.pt.name for s in steps if s.cpu}
    assert "model.embed_tokens.weight" in big and "model.layers.0.mlp.up_proj.weight" in big
    assert "model.norm.weight" not in big and "model.layers.0.self_attn.q_proj.weight" not in big
    assert all(len([t for t in steps if t.pt is s.pt]) == 1 for s in steps)  # never split


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


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_in_row_chunks_gives_the_whole_tensor_bytes(tmp_path, llama_family,
                                                                filter_wise):
    recipe = write_recipe(tmp_path, f"""
merge_method: model_stock
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
  - model: {llama_family['code']}
  - model: {llama_family['chat']}
parameters: {{filter_wise: {str(filter_wise).lower()}}}
""")
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


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU_METHODS = {  # method: (models' parameters, whether a base model is used)
    "linear": ("{weight: 0.6}", False),
    "task_arithmetic": ("{weight: 0.6}", True),
    "ties": ("{weight: 1.0, density: 0.5}", True),
    "dare_ties": ("{weight: 1.0, density: 0.5}", True),
    "breadcrumbs": ("{weight: 1.0, density: 0.6, gamma: 0.1}", True),
    "della": ("{weight: 1.0, density: 0.5, epsilon: 0.2}", True),
    "slerp": ("{}", True),
    "nuslerp": ("{weight: 0.5}", False),
    "model_stock": ("{}", True),
}


def gpu_recipe(tmp_path: Path, family: dict[str, Path], method: str) -> Path:
    params, with_base = GPU_METHODS[method]
    models = {"slerp": ["code"], "nuslerp": ["math", "code"]}.get(method, ["math", "code", "chat"])
    lines = [f"merge_method: {method}"]
    if with_base:
        lines.append(f"base_model: {family['base']}")
    lines.append("models:")
    lines += [f"  - model: {family[m]}\n    parameters: {params}" for m in models]
    if method == "slerp":
        lines.append("parameters: {t: 0.3}")
    return write_recipe(tmp_path, "\n".join(lines) + "\ndtype: float32\n")


SPHERICAL = {"nuslerp"}  # angles from torch.acos/sin on the device: libraries differ in ulps


@needs_cuda
@pytest.mark.parametrize("method", sorted(GPU_METHODS))
def test_cuda_merges_write_the_cpu_bytes(tmp_path, llama_family, method):
    """Counter-based draws, fixed-order sums, IEEE elementwise arithmetic: the GPU writes
    the bytes the CPU writes, whole and in row chunks (statistics passes on the GPU). Only
    methods taking transcendental functions of tensors on the device differ, in the last
    bits."""
    recipe = gpu_recipe(tmp_path, llama_family, method)
    cpu = merge_with(recipe, tmp_path / "cpu", ExecOptions(progress=False))
    for chunk in (2**30, 200):
        folder = tmp_path / f"gpu{chunk}"
        got = merge_with(recipe, folder, ExecOptions(device="cuda", chunk_bytes=chunk,
                                                      progress=False))
        if method not in SPHERICAL:
            assert got == cpu, f"{method}, chunks of {chunk} bytes"
            continue
        want = load_tensors(tmp_path / "cpu")
        for name, t in load_tensors(folder).items():
            torch.testing.assert_close(t, want[name], rtol=4e-7, atol=1e-7)


@pytest.fixture(scope="module")
def wide_family(tmp_path_factory):
    """Llama, 1 layer, hidden 512: MLP matrices of 2 MiB per input in float32."""
    from mergekit_like.demo import make_family

    return make_family(tmp_path_factory.mktemp("wide"), "llama", layers=1, hidden=512,
                       tokenizer=False)


def gpu_peak(recipe: Path, out: Path, options: ExecOptions) -> tuple[int, dict[str, bytes]]:
    """The most GPU memory the merge's tensors took, and the output bytes."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    got = merge_with(recipe, out, options)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before, got


@needs_cuda
def test_max_device_bytes_bounds_gpu_memory(tmp_path, wide_family, monkeypatch):
    monkeypatch.setattr("mergekit_like.execute.MIN_DEVICE_CHUNK", 2**16)
    recipe = gpu_recipe(tmp_path, wide_family, "ties")
    cpu = merge_with(recipe, tmp_path / "cpu", ExecOptions(progress=False))
    limit = 8 * 2**20
    free, _ = gpu_peak(recipe, tmp_path / "free", ExecOptions(
        device="cuda", chunk_bytes=2**30, progress=False))
    bound, got = gpu_peak(recipe, tmp_path / "bound", ExecOptions(
        device="cuda", chunk_bytes=2**30, max_device_bytes=limit, progress=False))
    assert free > limit >= bound, (free, bound)
    assert got == cpu


def test_compiled_kernels_are_refused_on_a_gpu(tmp_path, llama_family, monkeypatch):
    # on an H100, triton's fused TIES kernel wrote other bytes than the eager passes
    # (bench/RESULTS.md), so a GPU run never compiles them
    from mergekit_like import run
    from mergekit_like.errors import MergeError

    plan = plan_from_file(gpu_recipe(tmp_path, llama_family, "ties"))
    monkeypatch.setattr(run, "resolve_device", lambda name: "cuda")
    with pytest.raises(MergeError, match="--kernels compiled: runs on the CPU only"):
        run.write_setup(plan, run.MergeOptions(device="cuda", kernels="compiled"))
    assert run.write_setup(plan, run.MergeOptions(device="cuda")).exec_options.device == "cuda"
