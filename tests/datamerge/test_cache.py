"""The statistics cache: hit and miss, keys that follow the data and settings, and files
that are never torn (interrupted writes, concurrent writers, a cut file)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from mergekit_like.datamerge.cache import StatsCache
from tests.datamerge.conftest import recipe_text


def statuses(out: Path) -> list[str]:
    return [
        s["cache"] for s in json.loads((out / "datamerge_report.json").read_text())["statistics"]
    ]


def model_bytes(out: Path) -> bytes:
    return (out / "model.safetensors").read_bytes()


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_second_run_hits_and_gives_the_same_bytes(vit_setup, run_merge, tmp_path, method) -> None:
    folders, data = vit_setup
    first = run_merge(recipe_text(method, folders[:2], data))
    assert statuses(first) == ["miss", "miss"]
    assert len(list((tmp_path / "cache" / "stats").glob("*.safetensors"))) == 2
    second = run_merge(recipe_text(method, folders[:2], data))
    assert statuses(second) == ["hit", "hit"]
    assert model_bytes(first) == model_bytes(second)
    other = recipe_text(method, folders[:2], data).replace("num_examples: 6", "num_examples: 5")
    assert statuses(run_merge(other)) == ["miss", "miss"]  # other data: another key


def test_a_cut_cache_file_is_a_miss_and_is_rewritten(vit_setup, run_merge, tmp_path) -> None:
    folders, data = vit_setup
    first = run_merge(recipe_text("fisher", folders[:2], data))
    key = json.loads((first / "datamerge_report.json").read_text())["statistics"][1]["key"]
    path = tmp_path / "cache" / "stats" / f"{key}.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # a torn file, as a crash without rename would
    second = run_merge(recipe_text("fisher", folders[:2], data))
    assert statuses(second) == ["hit", "miss"]
    assert model_bytes(first) == model_bytes(second)
    assert statuses(run_merge(recipe_text("fisher", folders[:2], data))) == ["hit", "hit"]


def test_cache_off_writes_nothing_to_the_user_cache(vit_setup, run_merge, tmp_path) -> None:
    folders, data = vit_setup
    out = run_merge(recipe_text("regmean", folders[:2], data, "cache: false"))
    assert statuses(out) == ["off", "off"]
    assert not (tmp_path / "cache").exists()
    assert not (out / ".datamerge-stats").exists()


def test_an_interrupted_store_leaves_no_file(tmp_path, monkeypatch) -> None:
    import os

    cache = StatsCache(tmp_path, persistent=True)
    pwrite = os.pwrite

    def dies_half_way(fd, data, offset):  # noqa: ANN001, ANN202
        pwrite(fd, bytes(data)[:2], offset)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "pwrite", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        cache.store("k", {"a": torch.ones(3)})
    assert list(tmp_path.iterdir()) == []
    assert not cache.has("k")


def test_store_writes_tensor_by_tensor_and_consumes(tmp_path) -> None:
    from safetensors.torch import load_file

    cache = StatsCache(tmp_path, persistent=True)
    want = {"z": torch.randn(4, 3), "a.b": torch.randn(5), "s": torch.tensor(2.5)}
    tensors = {n: t.clone() for n, t in want.items()}
    path = cache.store("k", tensors, consume=True)
    assert tensors == {}  # each entry let go once written
    got = load_file(path)
    assert set(got) == set(want)
    for name, t in want.items():
        assert torch.equal(got[name], t)
    assert cache.has("k")


def test_concurrent_writers_leave_one_whole_file(tmp_path) -> None:
    from safetensors.torch import load_file

    cache = StatsCache(tmp_path, persistent=True)
    payloads = [{"a": torch.full((50_000,), float(i))} for i in range(6)]
    threads = [threading.Thread(target=cache.store, args=("k", p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = load_file(cache.path("k"))["a"]
    assert any(torch.equal(got, p["a"]) for p in payloads)
    assert [p.name for p in tmp_path.iterdir()] == ["k.safetensors"]
    assert cache.has("k")
    assert_close(got, torch.full_like(got, float(got[0])))


def test_stats_file_reads_back_what_was_stored(tmp_path) -> None:
    from mergekit_like.datamerge.cache import StatsFile

    cache = StatsCache(tmp_path, persistent=True)
    tensors = {"a.weight": torch.randn(3, 5), "b": torch.randn(7), "c": torch.randn(2, 2, 2)}
    f = StatsFile(cache.store("k", tensors))
    assert f.keys() == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(f.get(name), t)
