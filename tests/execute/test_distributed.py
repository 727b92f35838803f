"""merge --num-processes: the output shards split across 2 CPU processes (gloo) give the very
bytes of a single-process run; a failure on any rank fails the whole run with one line.

The process tests spawn real ranks (a few seconds each: every rank imports torch); the rank
protocol's other paths run both ranks as threads of this process over an in-memory store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import threading
from pathlib import Path

import pytest

from mergekit_like.cli import main
from mergekit_like.errors import MergeError
from mergekit_like.execute.distributed import Ranks, assign_shards, run_rank
from mergekit_like.execute.setup import MergeOptions
from mergekit_like.io.writer import ShardLayout, layout_shards
from mergekit_like.plan.build import Plan, plan_from_file
from tests.conftest import write_recipe

OPTS = ["--quiet", "--out-shard-size", "40KB", "--seed", "3"]


def _recipe(tmp_path: Path, f: dict[str, Path], method: str, zero_sum: str = "") -> Path:
    """dare_ties (random masks seeded per tensor) or linear; with ``zero_sum``, linear's
    weights of the tensors matching that filter sum to zero, so their merge fails."""
    if method == "dare_ties":
        return write_recipe(tmp_path, f"""merge_method: dare_ties
base_model: {f['base']}
models:
  - model: {f['math']}
    parameters: {{weight: 0.7, density: 0.5}}
  - model: {f['code']}
    parameters: {{weight: 0.5, density: 0.6}}
""")
    a, b = (f"[{{filter: {zero_sum}, value: {w}}}, {{value: {d}}}]" if zero_sum else d
            for w, d in ((1.0, 0.3), (-1.0, 0.9)))
    return write_recipe(tmp_path, f"""merge_method: linear
models:
  - model: {f['math']}
    parameters: {{weight: {a}}}
  - model: {f['code']}
    parameters: {{weight: {b}}}
""")


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file but the two that record the command line (it names the recipe)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name not in ("README.md", "merge_recipe.yaml")}


def _layout(plan: Plan) -> ShardLayout:
    return layout_shards([(t.name, t.dtype, t.shape) for t in plan.tensors], 40_000)


def _rank_of(plan: Plan, part: str) -> tuple[str, int]:
    """The tensor named with ``part`` and the rank of 2 that writes it."""
    layout = _layout(plan)
    name = next(t.name for t in plan.tensors if part in t.name)
    owners = assign_shards(layout, 2)
    return name, next(r for r in range(2) if layout.slots[name].shard in owners[r])


def _run_threads(plan: Plan, out: Path, options: MergeOptions) -> list[BaseException | None]:
    """run_rank for ranks 0 and 1 on two threads sharing an in-memory store."""
    import torch.distributed as dist

    store, errors = dist.HashStore(), [None, None]

    def rank(r: int) -> None:
        try:
            run_rank(plan, out, options, Ranks(r, 2, store), r)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_assign_shards_balances_bytes():
    # float32 vectors of 100, 60, 50, 40 and 20 kB in shards of at most 100 kB
    layout = layout_shards([(f"t{i}", "F32", (n * 250,)) for i, n in
                            enumerate([100, 60, 50, 40, 20])], 100_000)
    assert [len(layout.files)] + [s // 1000 for s in layout.sizes] == [4, 100, 60, 90, 20]
    # largest first, each to the rank with fewer bytes: 100 -> 0, 90 -> 1, 60 -> 1, 20 -> 0
    assert assign_shards(layout, 2) == ((0, 3), (1, 2))
    assert assign_shards(layout, 1) == ((0, 1, 2, 3),)
    assert assign_shards(layout, 5)[4] == ()  # more ranks than shards: some idle


def test_writers_of_some_shards_fill_one_layout(tmp_path):
    import torch

    from mergekit_like.io.writer import INDEX_NAME, ShardWriter, write_index

    tensors = {f"t{i}": torch.arange(n, dtype=torch.float32) + i for i, n in
               enumerate([30, 20, 25, 10])}
    layout = layout_shards([(n, "F32", tuple(t.shape)) for n, t in tensors.items()], 150)
    assert len(layout.files) == 3  # t0 | t1 | t2 t3 (120, 80 and 100 + 40 bytes)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    whole = ShardWriter(tmp_path / "one", layout)
    parts = [ShardWriter(tmp_path / "two", layout, shards=s) for s in ((1,), (0, 2))]
    for name, t in tensors.items():
        whole.write(name, t)
        parts[0 if layout.slots[name].shard == 1 else 1].write(name, t)
    with pytest.raises(ValueError, match="not written by this writer"):
        parts[0].write("t0", tensors["t0"])
    whole.finish()
    for part in parts:
        part.finish()
    assert not (tmp_path / "two" / INDEX_NAME).exists()  # no single part owns every shard
    write_index(tmp_path / "two", layout)
    assert _digests(tmp_path / "two") == _digests(tmp_path / "one")


@pytest.mark.parametrize("method", ["linear", "dare_ties"])
def test_two_processes_write_the_bytes_of_one(tmp_path, llama_family, method):
    recipe = _recipe(tmp_path, llama_family, method)
    one, two = tmp_path / "one" / "out", tmp_path / "two" / "out"
    assert main([str(recipe), str(one), *OPTS]) == 0
    assert main([str(recipe), str(two), *OPTS, "--num-processes", "2"]) == 0
    digests = _digests(one)
    assert len([n for n in digests if n.endswith(".safetensors")]) >= 3
    assert all(assign_shards(_layout(plan_from_file(recipe)), 2))  # both ranks had shards
    assert _digests(two) == digests
    assert not (two.parent / ".out.partial").exists()


def test_failure_on_rank_1_fails_the_run_with_one_line(tmp_path, llama_family, capfd):
    recipe = _recipe(tmp_path, llama_family, "linear", zero_sum="lm_head")
    name, rank = _rank_of(plan_from_file(recipe), "lm_head")
    assert rank == 1
    capfd.readouterr()
    code = main([str(recipe), str(tmp_path / "out"), *OPTS, "--num-processes", "2"])
    assert code == 2
    assert capfd.readouterr().err.splitlines() == [
        f"error: tensor {name!r}: merge method 'linear' failed: the weights sum to zero; set "
        "normalize: false or change them"]
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_failure_on_rank_0_fails_every_rank(tmp_path, llama_family):
    plan = plan_from_file(_recipe(tmp_path, llama_family, "linear", zero_sum="embed_tokens"))
    name, rank = _rank_of(plan, "embed_tokens")
    assert rank == 0
    errors = _run_threads(plan, tmp_path / "out", MergeOptions(quiet=True, out_shard_bytes=40_000))
    assert isinstance(errors[0], MergeError) and isinstance(errors[1], MergeError)
    assert [str(p) for p in errors[0].problems] == [
        f"tensor {name!r}: merge method 'linear' failed: the weights sum to zero; set "
        "normalize: false or change them"]
    assert errors[1].problems == ()  # rank 0 alone prints the message
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_full_disk_on_rank_1_keeps_a_partial_that_one_process_resumes(tmp_path, llama_family,
                                                                      monkeypatch):
    import mergekit_like.io.writer as writer

    recipe = _recipe(tmp_path, llama_family, "dare_ties")
    plan = plan_from_file(recipe)
    name, rank = _rank_of(plan, "lm_head")
    assert rank == 1
    real = writer.ShardWriter.write

    def write(self, tensor_name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if tensor_name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, tensor_name, *args, **kwargs)

    monkeypatch.setattr(writer.ShardWriter, "write", write)
    out = tmp_path / "two" / "out"
    errors = _run_threads(plan, out, MergeOptions(quiet=True, out_shard_bytes=40_000, seed=3))
    assert isinstance(errors[0], MergeError) and isinstance(errors[1], MergeError)
    message = str(errors[0].problems[0])
    assert "No space left on device" in message and "--resume" in message
    assert not out.exists() and (out.parent / ".out.partial" / ".merge-journal").is_file()
    monkeypatch.setattr(writer.ShardWriter, "write", real)
    assert main([str(recipe), str(out), *OPTS, "--resume"]) == 0
    assert main([str(recipe), str(tmp_path / "one" / "out"), *OPTS]) == 0
    assert _digests(out) == _digests(tmp_path / "one" / "out")


def test_bad_num_processes(tmp_path, llama_family, run_cli, monkeypatch):
    recipe = _recipe(tmp_path, llama_family, "linear")
    res = run_cli(recipe, tmp_path / "out", "--num-processes", "0")
    assert (res.code, res.err) == (2, "error: --num-processes: expected 1 or more, got 0\n")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun
    res = run_cli(recipe, tmp_path / "out", "--num-processes", "3")
    assert res.code == 2 and res.err == (
        "error: --num-processes 3: this run was started by a launcher with 2 processes; "
        "leave --num-processes out\n")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_the_parent_killed_leaves_a_resumable_partial_and_no_tracebacks(tmp_path, llama_family):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.execute.test_output import wait_stopped

    recipe = _recipe(tmp_path, llama_family, "dare_ties")
    out = tmp_path / "two" / "out"
    env = {**os.environ, "MERGEKIT_LIKE_KILL_AFTER_WRITES": "2:stop"}
    parent = subprocess.Popen([sys.executable, "-m", "mergekit_like", str(recipe), str(out),
                               *OPTS, "--num-processes", "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not kids and time.monotonic() < deadline:  # a rank stopped itself
            for kid in _children(parent.pid):
                try:
                    wait_stopped(kid, timeout=0.05)
                    kids = _children(parent.pid)
                    break
                except (AssertionError, OSError):
                    pass
        assert kids, "no rank stopped"
    finally:
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
            for kid in kids:
                with contextlib.suppress(OSError):
                    os.kill(kid, signal.SIGCONT)
            time.sleep(0.1)
        _, err = parent.communicate(timeout=60)
    assert not any(Path(f"/proc/{k}").exists() for k in kids), "a rank outlived its parent"
    assert "Traceback" not in err and "frame #" not in err, err
    assert (out.parent / ".out.partial" / ".merge-journal").is_file()
    assert main([str(recipe), str(out), *OPTS, "--resume"]) == 0
    assert main([str(recipe), str(tmp_path / "one" / "out"), *OPTS]) == 0
    assert _digests(out) == _digests(tmp_path / "one" / "out")


def test_sigterm_to_the_parent_stops_every_rank_with_one_line(tmp_path, llama_family):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.execute.test_output import wait_stopped

    recipe = _recipe(tmp_path, llama_family, "dare_ties")
    out = tmp_path / "two" / "out"
    env = {**os.environ, "MERGEKIT_LIKE_KILL_AFTER_WRITES": "2:stop"}
    parent = subprocess.Popen([sys.executable, "-m", "mergekit_like", str(recipe), str(out),
                               *OPTS, "--num-processes", "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not kids and time.monotonic() < deadline:
            for kid in _children(parent.pid):
                with contextlib.suppress(AssertionError, OSError):
                    wait_stopped(kid, timeout=0.05)
                    kids = _children(parent.pid)
                    break
        assert kids, "no rank stopped"
        parent.send_signal(signal.SIGTERM)  # only the parent: it must pass it on
        time.sleep(0.5)
    finally:
        for kid in kids:
            with contextlib.suppress(OSError):
                os.kill(kid, signal.SIGCONT)
        _, err = parent.communicate(timeout=120)
    partial = out.parent / ".out.partial"
    assert parent.returncode == 130 and err.splitlines() == [
        f"interrupted; the partial output is kept in {partial}: rerun the same command with "
        "--resume to continue"], err
    assert main([str(recipe), str(out), *OPTS, "--resume"]) == 0
    assert main([str(recipe), str(tmp_path / "one" / "out"), *OPTS]) == 0
    assert _digests(out) == _digests(tmp_path / "one" / "out")
