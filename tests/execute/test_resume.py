"""Resume after a crash: kill -9 at several points, a full disk, Ctrl-C; the result is
byte-identical to an uninterrupted run."""

from __future__ import annotations

import errno
import hashlib
import json
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


def _kept(partial: Path) -> dict[str, str]:
    """The partial output's files, but the lock owner's pid (each run writes its own)."""
    return {k: v for k, v in _digests(partial).items() if k != ".merge-owner"}


def test_a_refused_resume_keeps_the_partial_and_says_what_differs(tmp_path, llama_family,
                                                                  reference):
    recipe = _recipe(tmp_path, llama_family)
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    assert _merge(recipe, out, kill_after=5).returncode == -9
    before = _kept(partial)
    tail = ("; it is kept: rerun with the settings it was made with and --resume, or with "
            "--force to start over")
    for extra, differs in [(("--seed", "6"), "--seed (5, now 6)"),
                           (("models.1.parameters.weight=0.4",), "recipe at "
                            "models[1].parameters.weight (0.5, now 0.4)"),
                           (("--out-shard-size", "30KB"),
                            "--out-shard-size (60000 bytes, now 30000 bytes)")]:
        res = _merge(recipe, out, "--resume", *extra)
        assert res.returncode == 2 and res.stderr.splitlines() == [
            f"error: {partial}: not resumed: it was made with another {differs}{tail}"]
        assert _kept(partial) == before  # nothing deleted, nothing started over
    resumed = _merge(recipe, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _digests(out) == reference


def test_a_failure_after_the_tensors_keeps_them_for_resume(tmp_path, llama_family, reference,
                                                           run_cli, monkeypatch):
    import shutil

    import mergekit_like.io.writer as writer

    real = shutil.copyfile

    def copyfile(src, dst, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(dst).name == "generation_config.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    recipe = _recipe(tmp_path, llama_family)
    partial = tmp_path / ".out.partial"
    res = run_cli(recipe, tmp_path / "out", *OPTS)
    assert res.code == 2 and res.err.splitlines() == [
        f"error: writing {tmp_path / 'out'} failed: No space left on device; the merged tensors "
        f"are kept in {partial}: fix the cause and rerun the same command with --resume"]
    lines = (partial / ".merge-journal").read_text().splitlines()
    assert len(lines) == 1 + 21  # the head and every tensor
    monkeypatch.setattr(shutil, "copyfile", real)

    def write(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a kept tensor was computed again")

    monkeypatch.setattr(writer.ShardWriter, "write", write)
    res = run_cli(recipe, tmp_path / "out", *OPTS, "--resume")
    assert res.code == 0, res.err
    assert _digests(tmp_path / "out") == reference


def _full_disk_after(monkeypatch, writes: int) -> None:
    """pwrite fails with ENOSPC after ``writes`` calls (undo with monkeypatch.undo())."""
    import mergekit_like.io.writer as writer

    real = os.pwrite
    calls = {"n": 0}

    def pwrite(fd, data, offset):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(writer.os, "pwrite", pwrite)


def test_resume_recomputes_a_journaled_tensor_whose_bytes_are_lost(tmp_path, llama_family,
                                                                   reference, run_cli,
                                                                   monkeypatch):
    """As if the journal line reached the disk and the tensor's bytes did not."""
    from mergekit_like.io.safetensors_header import read_header

    _full_disk_after(monkeypatch, 12)
    recipe = _recipe(tmp_path, llama_family)
    assert run_cli(recipe, tmp_path / "out", *OPTS).code == 2
    monkeypatch.undo()
    partial = tmp_path / ".out.partial"
    done = [json.loads(line)["done"]
            for line in (partial / ".merge-journal").read_text().splitlines()[1:]]
    assert len(done) >= 3
    lost = 0
    for shard in sorted(partial.glob("*.safetensors")):
        for name, info in read_header(shard).items():
            if name in done[:3]:  # zero the bytes of three journaled tensors
                with open(shard, "r+b") as f:
                    f.seek(info.start)
                    f.write(bytes(info.nbytes))
                lost += 1
    assert lost == 3
    res = run_cli(recipe, tmp_path / "out", *OPTS, "--resume")
    assert res.code == 0, res.err
    assert _digests(tmp_path / "out") == reference


def test_a_journal_line_follows_its_tensors_data_to_the_disk(tmp_path, llama_family, run_cli,
                                                              monkeypatch):
    """Every tensor's bytes are flushed (fdatasync) after its last write and before its
    journal line, so a crash can never journal bytes the disk does not hold."""
    import mergekit_like.io.writer as writer
    from mergekit_like.execute.journal import Journal

    events: list[tuple[str, object]] = []
    real_write, real_record, real_sync = writer.ShardWriter.write, Journal.record, os.fdatasync

    def write(self, name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        events.append(("write", (self.layout.slots[name].shard, name)))
        return real_write(self, name, *args, **kwargs)

    def record(self, name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        events.append(("record", name))
        return real_record(self, name, *args, **kwargs)

    def fdatasync(fd):  # noqa: ANN001, ANN202
        events.append(("sync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_sync(fd)

    monkeypatch.setattr(writer.ShardWriter, "write", write)
    monkeypatch.setattr(Journal, "record", record)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    res = run_cli(_recipe(tmp_path, llama_family), tmp_path / "out", *OPTS)
    assert res.code == 0, res.err
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    recorded = [e[1] for e in events if e[0] == "record"]
    assert len(recorded) == 21
    for name in recorded:
        i = events.index(("record", name))
        last = max(j for j, e in enumerate(events[:i]) if e[0] == "write" and e[1][1] == name)
        shard = files[events[last][1][0]]
        assert ("sync", shard) in events[last:i], name


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


def _popen_stopping(recipe: Path, out: Path, after: int, *extra: str) -> subprocess.Popen[str]:
    """A merge that stops itself (SIGSTOP) after ``after`` tensor writes."""
    env = {**{k: v for k, v in os.environ.items() if k != KILL_ENV}, KILL_ENV: f"{after}:stop"}
    return subprocess.Popen([sys.executable, "-m", "mergekit_like", str(recipe), str(out),
                             *OPTS, *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_is_a_ctrl_c(tmp_path, llama_family, reference):
    import signal

    from tests.execute.test_output import wait_stopped

    recipe, out = _recipe(tmp_path, llama_family), tmp_path / "out"
    proc = _popen_stopping(recipe, out, 9)
    try:
        wait_stopped(proc.pid)
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.splitlines() == [
        f"interrupted; the partial output is kept in {tmp_path / '.out.partial'}: rerun the "
        "same command with --resume to continue"]
    resumed = _merge(recipe, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _digests(out) == reference


def test_an_ingredient_truncated_mid_merge_is_one_line(tmp_path, llama_family):
    """Reading through a memory map died of SIGBUS (exit 135 in a shell), without a word."""
    import shutil
    import signal

    from tests.execute.test_output import wait_stopped

    f = {k: tmp_path / k for k in ("math", "code")}
    for k, path in f.items():
        shutil.copytree(llama_family[k], path)
    recipe = _recipe(tmp_path, f, "linear")
    proc = _popen_stopping(recipe, tmp_path / "out", 4)
    shard = f["code"] / "model.safetensors"
    try:
        wait_stopped(proc.pid)
        with open(shard, "r+b") as fh:
            fh.truncate(4096)
    finally:
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {shard}: ") and "changed while being read" in err
