"""Steps from a plan: row chunks, statistics passes, working sets, fitting a GPU's memory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mergekit_like.execute.steps import (
    DEVICE_SLACK,
    estimate_peak_bytes,
    fit_device,
    plan_steps,
    splittable,
    step_peaks,
)
from mergekit_like.plan.build import plan_from_file
from tests.conftest import write_recipe


def linear_pair(tmp_path, family) -> Path:
    """linear over two of ``family``'s fine-tunes, computed in float32."""
    return write_recipe(tmp_path, f"""
merge_method: linear
models:
  - model: {family['math']}
  - model: {family['code']}
dtype: float32
""")


def test_steps_cover_every_tensor_once(tmp_path, llama_family):
    plan = plan_from_file(linear_pair(tmp_path, llama_family))
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
    plan = plan_from_file(linear_pair(tmp_path, llama_family))
    # the largest steps are 64 x 32 float32 matrices (8 KiB per input, 2 inputs). At
    # mlp.gate_proj: inputs + result + one temporary per input = 6 x 8 KiB, up_proj read
    # ahead (2 x 8 KiB), down_proj's result still being written (8 KiB)
    assert estimate_peak_bytes(plan, chunk_bytes=2**30) == 6 * 8192 + 2 * 8192 + 8192


@pytest.fixture
def nuslerp_family_recipe(tmp_path, llama_family):
    """A method that takes whole tensors (nuslerp with its vectors along dim 0) beside
    copies: fit_device's hard cases."""
    return write_recipe(tmp_path, f"""
merge_method: nuslerp
models:
  - model: {llama_family['math']}
    parameters: {{weight: 0.4}}
  - model: {llama_family['code']}
    parameters: {{weight: 0.6}}
parameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}
dtype: float32
""")


def test_fit_device_without_a_limit_keeps_every_step_and_the_chunk(ties_recipe):
    plan = plan_from_file(ties_recipe)
    chunk, steps = fit_device(plan, 4096, None)
    assert chunk == 4096 and steps == plan_steps(plan, 4, 4096)
    assert not any(s.cpu for s in steps)


@pytest.mark.parametrize("limit", [30_000, 60_000, 10**9])
def test_fit_device_shrinks_chunks_until_every_split_step_fits(ties_recipe, limit, monkeypatch):
    monkeypatch.setattr("mergekit_like.execute.steps.MIN_DEVICE_CHUNK", 64)
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
    # row-wise nuslerp takes whole tensors. A 32 x 32 projection: 2 inputs of 4 KiB, working set
    # 6 x 4 KiB + the next projection read ahead (8 KiB) + the last result (4 KiB), times
    # the slack 1.25 = 45 KiB: fits 50 KB. The 64 x 32 matrices need twice that: they don't.
    chunk, steps = fit_device(plan, 4096, 50_000)
    big = {s.pt.name for s in steps if s.cpu}
    assert "model.embed_tokens.weight" in big and "model.layers.0.mlp.up_proj.weight" in big
    assert "model.norm.weight" not in big and "model.layers.0.self_attn.q_proj.weight" not in big
    assert all(len([t for t in steps if t.pt is s.pt]) == 1 for s in steps)  # never split


def test_peak_estimate_counts_what_torch_order_sums_keep(ties_recipe):
    """ties with ``rescale: true`` keeps each model's magnitudes of a row-chunked tensor,
    before and after the trim, for mergekit's ``torch.sum`` of each: the estimate counts
    them (2 copies per model in the compute dtype), and without rescale it does not."""
    rescaled = ties_recipe.with_name("rescaled.yaml")
    rescaled.write_text(ties_recipe.read_text() + "parameters: {rescale: true}\n")
    chunk = 256
    plan = plan_from_file(rescaled)
    chunked = [s for s in plan_steps(plan, 4, chunk)
               if s.rows is not None and s.rows != (0, s.pt.shape[0])]
    biggest = max(math.prod(s.pt.shape) for s in chunked)
    kept = 2 * 2 * biggest * 4  # 2 copies x 2 models x entries x float32
    assert estimate_peak_bytes(plan, chunk) >= kept
    assert estimate_peak_bytes(plan_from_file(ties_recipe), chunk) < kept
