"""The executor on a CUDA device: the CPU's bytes, bounded GPU memory, no compiled kernels.

The GPU tests are skipped without one (CI has none); they were run on a lent H100
(bench/RESULTS.md, "GPU").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergekit_like.execute.executor import ExecOptions
from mergekit_like.plan.build import plan_from_file
from tests.conftest import load_tensors, write_recipe
from tests.execute.test_executor import merge_with

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
    # added in the sixth session, without a GPU to run them on (torch's reductions on the
    # device, as mergekit's: see SPHERICAL)
    "multislerp": ("{weight: 0.5}", True),
    "karcher": ("{}", False),
    "nearswap": ("{}", True),
}


def gpu_recipe(tmp_path: Path, family: dict[str, Path], method: str) -> Path:
    params, with_base = GPU_METHODS[method]
    models = {"slerp": ["code"], "nearswap": ["code"], "nuslerp": ["math", "code"]}.get(
        method, ["math", "code", "chat"])
    lines = [f"merge_method: {method}"]
    if with_base:
        lines.append(f"base_model: {family['base']}")
    lines.append("models:")
    lines += [f"  - model: {family[m]}\n    parameters: {params}" for m in models]
    if method in ("slerp", "nearswap"):
        lines.append("parameters: {t: 0.3}")
    return write_recipe(tmp_path, "\n".join(lines) + "\ndtype: float32\n")


# row-wise angles from torch.acos/sin on the device: the libraries differ in ulps (nuslerp's
# default mode now takes its angle on the host); the spherical methods reduce with torch's
# own sums and acos/sin on the device, as mergekit does (methods/pieces.py): the device's bytes
SPHERICAL = {"nuslerp", "slerp", "multislerp", "karcher"}
# model_stock takes mergekit's torch.norm/sum of whole tensors (methods/model_stock.py), so
# its bytes follow the device as mergekit's do (not run on a GPU since)
TORCH_SUMS = SPHERICAL | {"model_stock"}


@pytest.mark.parametrize("method", sorted(GPU_METHODS))
def test_the_gpu_tests_recipes_merge_on_the_cpu(tmp_path, llama_family, method):
    """Where no GPU is at hand, at least the recipes the GPU tests take are checked."""
    out = merge_with(gpu_recipe(tmp_path, llama_family, method), tmp_path / "cpu",
                     ExecOptions(progress=False))
    assert "model.safetensors" in out


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
        if method not in TORCH_SUMS:
            assert got == cpu, f"{method}, chunks of {chunk} bytes"
            continue
        want = load_tensors(tmp_path / "cpu")
        for name, t in load_tensors(folder).items():
            torch.testing.assert_close(t, want[name], rtol=4e-7, atol=1e-7)


@needs_cuda
@pytest.mark.parametrize("base", [False, True])
def test_cuda_row_wise_nuslerp_of_tall_tensors_matches_the_cpu(tmp_path, llama_family, base):
    """Row-wise nuslerp gathers its column sums over 4096-row chunks on the GPU too: the
    CPU's values, up to the device's acos and sin (as in the test above)."""
    from tests.execute.test_executor import row_wise_nuslerp_recipe

    recipe = row_wise_nuslerp_recipe(tmp_path, llama_family, base)
    merge_with(recipe, tmp_path / "cpu", ExecOptions(progress=False))
    want = load_tensors(tmp_path / "cpu")
    for chunk in (2**30, 200):
        folder = tmp_path / f"gpu{chunk}"
        merge_with(recipe, folder, ExecOptions(device="cuda", chunk_bytes=chunk, progress=False))
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
    monkeypatch.setattr("mergekit_like.execute.steps.MIN_DEVICE_CHUNK", 2**16)
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
    from mergekit_like.errors import MergeError
    from mergekit_like.execute import setup as run

    plan = plan_from_file(gpu_recipe(tmp_path, llama_family, "ties"))
    monkeypatch.setattr(run, "resolve_device", lambda name: "cuda")
    with pytest.raises(MergeError, match="--kernels compiled: runs on the CPU only"):
        run.write_setup(plan, run.MergeOptions(device="cuda", kernels="compiled"))
    assert run.write_setup(plan, run.MergeOptions(device="cuda")).exec_options.device == "cuda"
