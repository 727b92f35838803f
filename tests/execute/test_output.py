"""The output folder's safety: OUT never overlaps an input, one run per OUT (a lock on the
staging folder), and publishing only after every step succeeded."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
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


KILL_ENV = "MERGEKIT_LIKE_KILL_AFTER_WRITES"
OPTS = ["--quiet", "--out-shard-size", "60KB", "--seed", "5"]


def _linear(tmp_path: Path, f: dict[str, Path]) -> Path:
    return write_recipe(tmp_path, f"merge_method: linear\nmodels: [{{model: {f['math']}}}, "
                                  f"{{model: {f['code']}}}]\n")


def _merge(recipe: Path, out: Path, *extra: str, stop_after: int | None = None,
           popen: bool = False):  # noqa: ANN202
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if stop_after is not None:
        env[KILL_ENV] = f"{stop_after}:stop"
    cmd = [sys.executable, "-m", "mergekit_like", str(recipe), str(out), *OPTS, *extra]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def wait_stopped(pid: int, timeout: float = 90.0) -> None:
    """Wait until process ``pid`` has stopped itself (SIGSTOP)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not stop")


def test_a_second_run_on_a_live_output_fails_at_once_and_touches_nothing(tmp_path,
                                                                          llama_family):
    import signal

    recipe = _linear(tmp_path, llama_family)
    assert _merge(recipe, tmp_path / "ref").returncode == 0
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    first = _merge(recipe, out, stop_after=3, popen=True)
    try:
        wait_stopped(first.pid)
        before = _tree(partial)
        for extra in ((), ("--force",), ("--resume",), ("--force", "--resume")):
            res = _merge(recipe, out, *extra)
            assert res.returncode == 2 and res.stderr.splitlines() == [
                f"error: {out}: another merge (process {first.pid}) is writing it into "
                f"{partial}; wait for it to finish or stop it"], res.stderr
            assert _tree(partial) == before
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    got, want = _tree(out), _tree(tmp_path / "ref")
    assert got.pop("README.md") and want.pop("README.md")  # its title is OUT's name
    assert got == want and not partial.exists()
