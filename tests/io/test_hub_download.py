"""Downloads from the fake hub: a progress bar per model, the bound on models fetched at
once, and a killed merge that continues the cut-off file on the next run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import load_tensors, write_recipe
from tests.io.fake_hub import Stall
from tests.io.test_hub import _header_bytes, _snapshot, _ties, hub  # noqa: F401 - fixture

ROOT = Path(__file__).parents[2]
MODELS = ("acme/base", "acme/math", "acme/code")


def _bar_lines(err: str, ref: str) -> list[str]:
    """The progress lines (tqdm redraws with \\r) labelled with ``ref``."""
    return [line for line in re.split(r"[\r\n]+", err) if line.startswith(f"{ref}: ")]


def test_a_progress_bar_per_model(tmp_path, hub, run_cli, monkeypatch, llama_family):  # noqa: F811
    import importlib

    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not the class
    monkeypatch.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(hf_tqdm, "progress_bar_states", {})
    res = run_cli(write_recipe(tmp_path, _ties()), tmp_path / "out")
    assert res.code == 0, res.err
    size = (llama_family["math"] / "model.safetensors").stat().st_size
    for ref in MODELS:
        lines = _bar_lines(res.err, ref)
        weights = [line for line in lines if line.startswith(f"{ref}: 1 weight file: 100%")]
        assert weights, (ref, res.err.replace("\r", "\n"))  # its bar, finished
        assert f"{size / 1000:.1f}k/{size / 1000:.1f}k" in weights[-1], weights[-1]
        assert not any("Fetching" in line or "0.00B" in line for line in lines), lines
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache2"))  # again from empty, quiet
    res = run_cli(write_recipe(tmp_path, _ties()), tmp_path / "out2", "--quiet")
    assert res.code == 0, res.err
    assert (tmp_path / "cache2" / "models--acme--math").is_dir()
    assert not any(_bar_lines(res.err, ref) for ref in MODELS), res.err
    assert "%|" not in res.err, res.err


def test_models_download_at_once_within_the_bound(tmp_path, hub, llama_family, monkeypatch):  # noqa: F811
    from mergekit_like.io.hub import MAX_PARALLEL_MODELS, HubAccess, fetch_models

    refs = [f"acme/m{i}" for i in range(MAX_PARALLEL_MODELS + 2)]
    for ref in refs:
        hub.add_repo(ref, llama_family["math"])
    hub.weight_delay = 0.3  # each weight GET is held, so downloads in flight overlap
    paths = fetch_models(refs, HubAccess.from_env(progress=False))
    assert 1 < hub.max_repos_in_flight <= MAX_PARALLEL_MODELS, hub.max_repos_in_flight
    print(f"models in flight at once: {hub.max_repos_in_flight} of {len(refs)}")
    for ref in refs:
        assert (paths[ref] / "model.safetensors").read_bytes() == (
            llama_family["math"] / "model.safetensors"
        ).read_bytes()
    hub.reset_counts()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache2"))  # from empty, 2 at a time
    fetch_models(refs, HubAccess.from_env(progress=False), parallel=2)
    assert hub.max_repos_in_flight == 2


_KILLABLE = (
    "import sys, huggingface_hub.constants as c\n"
    "c.DOWNLOAD_CHUNK_SIZE = 4096  # as a 10 MB chunk is to a multi-GB shard\n"
    "from mergekit_like.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_a_killed_merge_continues_the_cut_off_file(tmp_path, hub, run_cli, llama_family):  # noqa: F811
    weights = llama_family["math"] / "model.safetensors"
    size, header = weights.stat().st_size, _header_bytes(weights)
    stall = Stall("model.safetensors", after=size // 2, repo="acme/math")
    hub.stalls.append(stall)
    recipe = write_recipe(tmp_path, _ties())
    cmd = [sys.executable, "-c", _KILLABLE, str(recipe), str(tmp_path / "out"), "--quiet"]
    proc = subprocess.Popen(cmd, env=dict(os.environ), cwd=ROOT, stderr=subprocess.PIPE)
    blobs = tmp_path / "cache" / "models--acme--math" / "blobs"
    try:
        assert stall.reached.wait(60), proc.stderr.read() if proc.poll() is not None else ""
        kept = 0
        for _ in range(200):  # the 4 KiB chunks received (all but the last) reach the disk
            parts = list(blobs.glob("*.incomplete"))
            kept = max([p.stat().st_size for p in parts], default=0)
            if kept >= (size // 2 // 4096 - 1) * 4096:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        stall.release.set()
    assert kept > 0
    first = hub.served["acme/math", "model.safetensors"]
    assert first == header + size // 2
    hub.reset_counts()
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--force")
    assert res.code == 0, res.err
    gets = [
        r
        for m, p, r in hub.requests
        if m == "GET" and p.startswith("/acme/math/resolve/") and p.endswith("/model.safetensors")
    ]
    resumed = [r for r in gets if r == f"bytes={kept}-"]
    assert resumed, gets  # the rest of the file, from the bytes kept
    again = hub.served["acme/math", "model.safetensors"]
    assert again == header + size - kept  # its header (planning), then only the missing part
    assert first + again < 2 * size
    assert list(blobs.glob("*.incomplete")) == []  # no orphans left
    snap = _snapshot(tmp_path, "acme/math")
    assert (snap / "model.safetensors").read_bytes() == weights.read_bytes()
    local = _ties(models=(llama_family["math"], llama_family["code"]), base=llama_family["base"])
    assert run_cli(write_recipe(tmp_path, local, "l.yaml"), tmp_path / "ref", "--quiet").code == 0
    got, want = load_tensors(tmp_path / "out"), load_tensors(tmp_path / "ref")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    print(f"resume figures: size {size}, first run {first}, kept {kept}, second run {again}")


def test_partial_files_of_earlier_runs(tmp_path, hub, llama_family):  # noqa: F811
    import hashlib

    from mergekit_like.io.hub import HubAccess, fetch_models

    data = {n: (llama_family[n] / "model.safetensors").read_bytes() for n in ("math", "code")}
    etag = {n: hashlib.sha256(d).hexdigest() for n, d in data.items()}
    cache = tmp_path / "cache"
    math_blobs = cache / "models--acme--math" / "blobs"
    code_blobs = cache / "models--acme--code" / "blobs"
    math_blobs.mkdir(parents=True)
    code_blobs.mkdir(parents=True)
    # a killed huggingface_hub download of math: its bytes are kept, the name is random
    (math_blobs / f"{etag['math']}.1a2b3c4d.incomplete").write_bytes(data["math"][:3000])
    (math_blobs / "0123abcd.5e6f7a8b.incomplete").write_bytes(b"an orphan of a small file")
    # a partial file of code whose bytes are not code's (a disk fault): not trusted
    (code_blobs / f"{etag['code']}.incomplete").write_bytes(b"\1" * 3000)
    paths = fetch_models(["acme/math", "acme/code"], HubAccess.from_env(progress=False))
    for n in ("math", "code"):
        assert (paths[f"acme/{n}"] / "model.safetensors").read_bytes() == data[n]
    ranges = {
        n: [
            r
            for m, p, r in hub.requests
            if m == "GET"
            and p.startswith(f"/acme/{n}/resolve/")
            and p.endswith("/model.safetensors")
        ]
        for n in ("math", "code")
    }
    assert ranges == {"math": ["bytes=3000-"], "code": ["bytes=3000-", None]}, ranges
    assert hub.served["acme/math", "model.safetensors"] == len(data["math"]) - 3000
    # code: the rest, whose hash does not match, then the whole file once more
    assert hub.served["acme/code", "model.safetensors"] == 2 * len(data["code"]) - 3000
    assert list(math_blobs.glob("*.incomplete")) == list(code_blobs.glob("*.incomplete")) == []
