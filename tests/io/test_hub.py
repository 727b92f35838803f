"""Hub models against a fake hub on 127.0.0.1: download only what a merge needs, resume,
offline mode, gated repos, and validate/plan from headers with no weight bytes."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_tensors, write_recipe
from tests.io.fake_hub import GOOD_TOKEN, FakeHub, Stall

EXTRAS = {
    "pytorch_model.bin": b"\0" * 5000,
    "README.md": b"# card",
    "onnx/model.onnx": b"x",
    "training_args.bin": b"y" * 100,
}
SMALL = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


@pytest.fixture
def hub(tmp_path, monkeypatch, llama_family, sharded_family):
    """A fake hub serving llama_family (with files a merge does not need), a sharded model,
    a .bin-only model and a gated one; HF_ENDPOINT points at it, the cache is empty."""
    import huggingface_hub.constants

    with FakeHub() as server:
        for name in ("base", "math", "code"):
            server.add_repo(f"acme/{name}", llama_family[name], extra=EXTRAS)
        server.add_repo("acme/sharded-x", sharded_family["x"])
        server.add_repo(
            "acme/binonly",
            llama_family["chat"],
            skip=("model.safetensors",),
            extra={"pytorch_model.bin": b"z" * 300},
        )
        server.add_repo("acme/gated", llama_family["chat"], gated=True)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


def _ties(models=("acme/math", "acme/code"), base="acme/base") -> str:
    lines = [
        f"  - model: {m}\n    parameters: {{weight: {0.5 + i}, density: 0.6}}"
        for i, m in enumerate(models)
    ]
    return (
        f"merge_method: ties\nbase_model: {base}\nmodels:\n"
        + "\n".join(lines)
        + "\ndtype: float32\n"
    )


def _snapshot(tmp_path: Path, repo: str) -> Path:
    snaps = list(
        (tmp_path / "cache" / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir()
    )
    assert len(snaps) == 1
    return snaps[0]


def _no_socket(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened in offline mode")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_merge_from_empty_cache_downloads_only_what_it_needs(tmp_path, hub, run_cli, llama_family):
    res = run_cli(write_recipe(tmp_path, _ties()), tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    for name in ("base", "math", "code"):
        snap = _snapshot(tmp_path, f"acme/{name}")
        assert {p.name for p in snap.iterdir()} == SMALL | {"model.safetensors"}
        weights = llama_family[name] / "model.safetensors"
        # the header (planned before the download), then the file once; no .bin
        assert hub.weight_bytes(f"acme/{name}") == _header_bytes(weights) + weights.stat().st_size
    local = _ties(models=(llama_family["math"], llama_family["code"]), base=llama_family["base"])
    assert (
        run_cli(write_recipe(tmp_path, local, "local.yaml"), tmp_path / "ref", "--quiet").code == 0
    )
    got, want = load_tensors(tmp_path / "out"), load_tensors(tmp_path / "ref")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    hub.reset_counts()  # a second run finds everything in the cache: no weight bytes
    assert (
        run_cli(write_recipe(tmp_path, _ties()), tmp_path / "out", "--quiet", "--force").code == 0
    )
    assert hub.weight_bytes() == 0


def test_sharded_and_bin_only_repos(tmp_path, hub, sharded_family):
    from mergekit_like.io.hub import HubAccess, fetch_models

    paths = fetch_models(["acme/sharded-x", "acme/binonly"], HubAccess.from_env(progress=False))
    index = json.loads((sharded_family["x"] / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    assert {p.name for p in paths["acme/sharded-x"].iterdir()} == SMALL | shards | {
        "model.safetensors.index.json"
    }
    assert {p.name for p in paths["acme/binonly"].iterdir()} == SMALL | {"pytorch_model.bin"}


def test_plan_and_validate_read_only_headers(tmp_path, hub, run_cli, llama_family, sharded_family):
    recipe = write_recipe(
        tmp_path,
        """merge_method: ties
base_model: acme/base
models:
  - model: acme/math
    parameters: {weight: 0.5, density: 0.6}
  - model: acme/code
    parameters: {weight: 0.5, density: 0.6}
""",
    )
    res = run_cli("plan", recipe, "--summary")
    assert res.code == 0, res.err
    assert "tensors: 21" in res.out
    headers = sum(
        _header_bytes(llama_family[n] / "model.safetensors") for n in ("base", "math", "code")
    )
    assert hub.weight_bytes() == headers  # 8 bytes + the JSON header of each file, no more
    for name in ("base", "math", "code"):
        assert not (_snapshot(tmp_path, f"acme/{name}") / "model.safetensors").exists()
    hub.reset_counts()
    res = run_cli("validate", recipe)
    assert res.code == 0 and "ok (ties, 3 models, 21 output tensors)" in res.out, res.err
    assert hub.weight_bytes() == headers
    hub.reset_counts()  # a sharded model: each shard's header
    shard_recipe = write_recipe(
        tmp_path,
        "merge_method: linear\nmodels:\n  - model: acme/sharded-x\n    parameters: {weight: 1.0}\n",
        "sharded.yaml",
    )
    assert run_cli("plan", shard_recipe, "--summary").code == 0
    shards = sorted(sharded_family["x"].glob("*.safetensors"))
    assert len(shards) > 1
    assert hub.weight_bytes() == sum(_header_bytes(s) for s in shards)


def test_header_errors_surface_before_any_download(tmp_path, hub, run_cli, llama_family):
    recipe = write_recipe(
        tmp_path,
        "merge_method: passthrough\nslices:\n"
        "  - sources: [{model: acme/math, layer_range: [0, 5]}]\n",
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert "layer_range [0, 5) is outside model 'acme/math', which has 2 layers" in res.err
    assert hub.weight_bytes() == _header_bytes(llama_family["math"] / "model.safetensors")
    assert not (tmp_path / "out").exists()


def test_broken_connection_resumes(tmp_path, hub, run_cli, llama_family, monkeypatch):
    import huggingface_hub.constants

    # 4 KiB chunks stand for the 10 MB ones of huggingface_hub, against multi-GB shards
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    weights = llama_family["math"] / "model.safetensors"
    size = weights.stat().st_size
    hub.stalls.append(Stall("model.safetensors", after=size // 2, drop=True))
    res = run_cli(write_recipe(tmp_path, _ties()), tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    gets = [
        (p, r)
        for m, p, r in hub.requests
        if m == "GET"
        and "/resolve/" in p
        and p.endswith("/model.safetensors")
        and (r or "").startswith("bytes=")
        and not (r or "").endswith(f"-{_header_bytes(weights) - 1}")
        and r != "bytes=0-7"
    ]
    assert len(gets) == 1, gets  # one resumed request, from the last whole chunk received
    repo = gets[0][0].split("/")[1] + "/" + gets[0][0].split("/")[2]
    kept = int(gets[0][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < kept <= size // 2
    header = _header_bytes(weights)
    assert hub.served[repo, "model.safetensors"] == size // 2 + header + size - kept
    snap = _snapshot(tmp_path, repo)
    name = repo.split("/")[1]
    assert (snap / "model.safetensors").read_bytes() == (
        llama_family[name] / "model.safetensors"
    ).read_bytes()


def test_killed_download_keeps_finished_files(tmp_path, hub, sharded_family):
    shards = sorted(p.name for p in sharded_family["x"].glob("*.safetensors"))
    last = shards[-1]
    stall = Stall(last, after=100)
    hub.stalls.append(stall)
    code = (
        "from mergekit_like.io.hub import HubAccess, download_model\n"
        "download_model('acme/sharded-x', HubAccess.from_env(progress=False))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ), cwd=Path(__file__).parents[2]
    )
    blobs = tmp_path / "cache" / "models--acme--sharded-x" / "blobs"
    try:
        assert stall.reached.wait(60), "the download never started"
        import time

        for _ in range(100):  # the other shards finish while the last one hangs
            done = [b for b in blobs.iterdir() if not b.name.endswith((".incomplete", ".lock"))]
            if len(done) >= len(shards) - 1 + 5:  # shards, index, config and tokenizer files
                break
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
        stall.release.set()
    before = {s: hub.served["acme/sharded-x", s] for s in shards}
    from mergekit_like.io.hub import HubAccess, download_model

    folder = download_model("acme/sharded-x", HubAccess.from_env(progress=False))
    for s in shards:
        again = hub.served["acme/sharded-x", s] - before[s]
        size = (sharded_family["x"] / s).stat().st_size
        assert again == (size if s == last else 0), s  # only the unfinished file again
        assert (folder / s).read_bytes() == (sharded_family["x"] / s).read_bytes()


def test_offline_never_opens_a_socket(tmp_path, hub, run_cli, monkeypatch):
    recipe = write_recipe(tmp_path, _ties())
    with monkeypatch.context() as m:
        _no_socket(m)
        res = run_cli(recipe, tmp_path / "out", "--quiet", "--offline")
        assert res.code == 2 and len(res.err.strip().splitlines()) == 3
        assert "error: model 'acme/base' is not in the Hugging Face cache" in res.err
        assert "downloads are off (--offline or HF_HUB_OFFLINE)" in res.err
        res = run_cli("validate", recipe, "--offline")
        assert res.code == 0 and "not checked, as 3 model(s) are not reachable" in res.out
        m.setenv("HF_HUB_OFFLINE", "1")
        res = run_cli("plan", recipe)
        assert res.code == 2 and "base_model: model 'acme/base' is not in the" in res.err
    assert hub.requests == []
    assert run_cli(recipe, tmp_path / "out", "--quiet").code == 0  # online: downloads
    with monkeypatch.context() as m:
        _no_socket(m)
        m.setenv("HF_HUB_OFFLINE", "1")
        res = run_cli(recipe, tmp_path / "out2", "--quiet")
        assert res.code == 0, res.err  # from the cache alone
        assert run_cli("validate", recipe).code == 0


def test_gated_and_missing_repos(tmp_path, hub, run_cli, monkeypatch):
    recipe = write_recipe(
        tmp_path,
        "merge_method: linear\nmodels:\n  - model: acme/gated\n    parameters: {weight: 1.0}\n",
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert res.err.strip() == (
        "error: recipe.yaml:3: models[0].model: "
        f"model 'acme/gated' is gated on {hub.url}: accept its terms on the model page and "
        "set HF_TOKEN to a token of that "
        f"account ({hub.url}/acme/gated)"
    )
    res = run_cli("validate", recipe)
    assert res.code == 2 and "models[0].model: model 'acme/gated' is gated" in res.err
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2 and "the token in HF_TOKEN has no access" in res.err
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert run_cli(recipe, tmp_path / "out", "--quiet").code == 0
    missing = write_recipe(
        tmp_path,
        "merge_method: linear\nmodels:\n  - model: acme/nope\n    parameters: {weight: 1.0}\n",
        "m.yaml",
    )
    res = run_cli(missing, tmp_path / "out2", "--quiet")
    assert res.code == 2
    assert res.err.strip() == (
        "error: m.yaml:3: models[0].model: "
        f"model 'acme/nope' was not found on {hub.url}: check the name "
        "(a private model needs HF_TOKEN)"
    )


def test_needed_files():
    from mergekit_like.io.hub import needed_files

    mistral = [
        "consolidated.safetensors",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model.bin.index.json",
        "config.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "README.md",
        "params.json",
        "original/consolidated.00.pth",
    ]
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    assert needed_files(mistral, index) == [
        "config.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert needed_files(["pytorch_model.bin", "config.json", "chat_template.jinja"]) == [
        "config.json",
        "chat_template.jinja",
        "pytorch_model.bin",
    ]
    adapter = [
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapter_model.bin",
        "README.md",
        "training_args.bin",
    ]
    assert needed_files(adapter) == ["adapter_config.json", "adapter_model.safetensors"]


def test_unreachable_endpoint(tmp_path, hub, run_cli, monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    recipe = write_recipe(tmp_path, _ties())
    res = run_cli("validate", recipe)
    assert res.code == 0 and "not checked, as 3 model(s) are not reachable" in res.out
    assert f"cannot reach http://127.0.0.1:{port}" in res.out
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2 and f"cannot reach http://127.0.0.1:{port}" in res.err
    assert len(res.err.strip().splitlines()) == 3


def test_lora_adapter_on_the_hub(tmp_path, hub, run_cli, llama_family):
    from tests.io.test_lora import MODULES, _adapter

    base = load_tensors(llama_family["base"])
    factors = _adapter(tmp_path / "lora", base, MODULES)
    hub.add_repo(
        "acme/lora",
        tmp_path / "lora",
        extra={"training_args.bin": b"t" * 50, "README.md": b"# adapter"},
    )
    recipe = write_recipe(
        tmp_path, "merge_method: passthrough\nmodels:\n  - model: acme/base+acme/lora\n"
    )
    res = run_cli("plan", recipe, "--summary")
    assert res.code == 0, res.err
    assert hub.weight_bytes("acme/lora") == _header_bytes(
        tmp_path / "lora" / "adapter_model.safetensors"
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    assert {p.name for p in _snapshot(tmp_path, "acme/lora").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    out = load_tensors(tmp_path / "out")
    for m, (a, b) in factors.items():
        torch.testing.assert_close(out[f"{m}.weight"], base[f"{m}.weight"] + (8.0 / 4) * (b @ a))


def test_validate_a_bin_only_hub_model(tmp_path, hub, run_cli, llama_family):
    recipe = write_recipe(
        tmp_path,
        "merge_method: linear\nmodels:\n"
        "  - model: acme/binonly\n    parameters: {weight: 1.0}\n"
        "  - model: acme/math\n    parameters: {weight: 1.0}\n",
    )
    res = run_cli("validate", recipe)
    assert res.code == 0, res.err
    assert "not checked, as 1 model(s) are not reachable" in res.out
    assert "'acme/binonly' has no safetensors weights on the hub" in res.out
    assert hub.weight_bytes() == _header_bytes(llama_family["math"] / "model.safetensors")


def test_a_sweep_downloads_its_hub_models(tmp_path, hub, run_cli, llama_family):
    """`merge -m` fetches the hub models of each run, as a single merge does."""
    recipe = write_recipe(tmp_path, _ties())
    res = run_cli("-m", recipe, tmp_path / "sweep", "parameters.lambda=0.5,1.0", "--quiet")
    assert res.code == 0, res.err
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(runs) == 2
    local = _ties(models=(llama_family["math"], llama_family["code"]), base=llama_family["base"])
    ref = write_recipe(tmp_path, local, "local.yaml")
    assert run_cli(ref, tmp_path / "ref", "parameters.lambda=1.0", "--quiet").code == 0
    got, want = load_tensors(runs[1]), load_tensors(tmp_path / "ref")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
