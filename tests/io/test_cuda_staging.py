"""The CUDA path: pinned uploads in the file dtype, events, results back, NaN checks.

These need a GPU; on a machine without one they are skipped (CI has none: they were run on
a lent H100, see bench/RESULTS.md).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mergekit_like.io.cuda_staging import CudaStaging, Outbound
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.safetensors_header import read_header

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def stored(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {
        "bf16": torch.randn(300, 17, generator=g).to(torch.bfloat16),
        "f16": torch.randn(64, 3, generator=g).to(torch.float16),
        "f32": torch.randn(129, generator=g),
        "scalar": torch.tensor(-1.25),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, path)
    return read_header(path), tensors


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("rows", [None, (7, 200), (299, 300)])
def test_uploads_hold_the_values_the_cpu_reads(stored, dtype, rows):
    header, tensors = stored
    staging = CudaStaging("cuda")
    with TensorReader() as reader:
        for name, info in header.items():
            r = rows if info.shape and rows and rows[1] <= info.shape[0] else None
            with staging.uploading():
                got = staging.read(reader, info, name, r, dtype)
            staging.wait(staging.hand_over([got]))
            want = reader.read(info, name, rows=r, dtype=dtype)
            assert got.device.type == "cuda" and got.dtype == want.dtype
            assert torch.equal(got.cpu(), want)


def test_many_uploads_in_flight_keep_their_own_bytes(stored):
    # pinned blocks are reused only once their copy is done: 50 reads queued without waiting
    header, tensors = stored
    staging = CudaStaging("cuda")
    info = header["bf16"]
    with TensorReader() as reader:
        with staging.uploading():
            got = [staging.read(reader, info, "bf16", (i, i + 5), "float32") for i in range(50)]
        staging.wait(staging.hand_over(got))
        total = torch.stack(got).sum(0)
    want = torch.stack([tensors["bf16"][i:i + 5].float() for i in range(50)]).sum(0)
    assert torch.equal(total.cpu(), want)


def test_downloads_arrive_and_carry_the_nan_check():
    staging = CudaStaging("cuda")
    good = torch.linspace(-1, 1, 1000, device="cuda").to(torch.bfloat16)
    bad = good.clone()
    bad[500] = float("nan")
    huge = torch.full((8,), torch.finfo(torch.float32).max, device="cuda")
    outs = [staging.download(t, check_finite=True) for t in (good, bad, huge)]
    assert torch.equal(outs[0].wait(), good.cpu()) and outs[0].tensor.is_pinned()
    assert outs[0].finite() and not (outs[1].wait() is None or outs[1].finite())
    assert outs[2].wait() is not None and outs[2].finite()  # the sum overflows, entries don't
    unchecked = staging.download(bad, check_finite=False)
    assert unchecked.wait() is not None and unchecked.finite()
    cpu = Outbound(torch.ones(3))
    assert cpu.wait() is cpu.tensor and cpu.finite()
