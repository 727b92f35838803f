"""Resume after a crash: kill -9 at several points, a full disk, Ctrl-C; the result is
byte-identical to an uninterrupted run."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_recipe

KILL_ENV = "MERGEKIT_LIKE_KILL_AFTER_WRITES"
OPTS = ["--quiet", "--chunk-size", "2KiB", "--out-shard-size", "60KB", "--seed", "5"]


def _recipe(tmp_path: Path, f: dict[str, Path], method: str = "dare_ties") -> Path:
    """dare_ties: random masks, one write per tensor; linear: rows written in 2 KiB chunks."""
    return write_recipe(tmp_path, f"""merge_method: {method}
base_model: {f['base']}
models:
  - model: {f['math']}
    parameters: {{weight: 0.7, density: 0.5}}
  - model: {f['code']}
    parameters: {{weight: 0.5, density: 0.6}}
""" if method == "dare_ties" else f"""merge_method: linear
models: [{{model: {f['math']}}}, {{model: {f['code']}}}]
""")


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file but the two that record the command line (it names the recipe)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name not in ("README.md", "merge_recipe.yaml")}


@pytest.fixture(scope="module")
def references(tmp_path_factory, llama_family):
    """sha256 of every output file of an uninterrupted run, per method."""
    from mergekit_like.cli import main

    out = {}
    for method in ("dare_ties", "linear"):
        tmp = tmp_path_factory.mktemp(f"ref-{method}")
        assert main([str(_recipe(tmp, llama_family, method)), str(tmp / "out"), *OPTS]) == 0
        out[method] = _digests(tmp / "out")
    return out


@pytest.fixture
def reference(references):
    return references["dare_ties"]


def _merge(recipe: Path, out: Path, *extra: str, kill_after: int | None = None):
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_after is not None:
        env[KILL_ENV] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "mergekit_like", str(recipe), str(out), *OPTS,
                           *extra], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("method", "kill_after"), [
    ("dare_ties", 0),  # right after the shard headers
    ("dare_ties", 11),  # between tensors
    ("linear", 9),  # in the middle of a tensor written in row chunks
    ("linear", 40),
])
def test_kill_9_then_resume_is_byte_identical(tmp_path, llama_family, references, method,
                                               kill_after):
    recipe = _recipe(tmp_path, llama_family, method)
    out = tmp_path / "out"
    crashed = _merge(recipe, out, kill_after=kill_after)
    assert crashed.returncode == -9, crashed.stderr
    partial = tmp_path / ".out.partial"
    assert partial.is_dir() and not out.exists()
    again = _merge(recipe, out)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently discarded
    resumed = _merge(recipe, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _digests(out) == references[method]
    assert not partial.exists()


def test_resume_refuses_another_recipe(tmp_path, llama_family):
    recipe = _recipe(tmp_path, llama_family)
    out = tmp_path / "out"
    assert _merge(recipe, out, kill_after=5).returncode == -9
    res = _merge(recipe, out, "--resume", "--seed", "6")
    assert res.returncode == 2 and "made with another recipe, seed or shard size" in res.stderr
    res = _merge(recipe, out, "--force")
    assert res.returncode == 0, res.stderr


def test_full_disk_keeps_a_resumable_partial(tmp_path, llama_family, reference, run_cli,
                                             monkeypatch):
    import mergekit_like.io.writer as writer

    real = os.pwrite
    calls = {"n": 0}

    def pwrite(fd, data, offset):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > 12:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(writer.os, "pwrite", pwrite)
    recipe = _recipe(tmp_path, llama_family)
    res = run_cli(recipe, tmp_path / "out", *OPTS)
    assert res.code == 2
    assert "No space left on device" in res.err and "--resume" in res.err
    assert len(res.err.strip().splitlines()) == 1
    monkeypatch.setattr(writer.os, "pwrite", real)
    res = run_cli(recipe, tmp_path / "out", *OPTS, "--resume")
    assert res.code == 0, res.err
    assert _digests(tmp_path / "out") == reference


def test_ctrl_c_says_how_to_resume(tmp_path, llama_family, reference, run_cli, monkeypatch):
    import mergekit_like.io.writer as writer

    real = writer.ShardWriter.write
    calls = {"n": 0}

    def write(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(writer.ShardWriter, "write", write)
    recipe = _recipe(tmp_path, llama_family)
    res = run_cli(recipe, tmp_path / "out", *OPTS)
    assert res.code == 130
    assert res.err.startswith("interrupted; the partial output is kept in")
    assert "--resume" in res.err and "Traceback" not in res.err
    monkeypatch.setattr(writer.ShardWriter, "write", real)
    res = run_cli(recipe, tmp_path / "out", *OPTS, "--resume")
    assert res.code == 0, res.err
    assert _digests(tmp_path / "out") == reference
