"""Model folders: indexes, duplicates, paths outside the folder, pickles that hold code."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from mergekit_like.errors import InputError
from mergekit_like.io.catalog import load_catalog


def _copy(tmp_path, src, name="m"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_sharded_catalog_reads_every_shard(sharded_family):
    cat = load_catalog("x", sharded_family["x"])
    index = json.loads((sharded_family["x"] / "model.safetensors.index.json").read_text())
    assert set(cat.tensors) == set(index["weight_map"])
    assert {t.file.name for t in cat.tensors.values()} == set(index["weight_map"].values())


def test_index_naming_a_missing_shard(tmp_path, sharded_family):
    model = _copy(tmp_path, sharded_family["x"])
    shard = sorted(model.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(InputError, match=f"names shard '{shard.name}', which is missing"):
        load_catalog("m", model)


def test_index_pointing_outside_the_model_folder(tmp_path, sharded_family):
    model = _copy(tmp_path, sharded_family["x"])
    index_path = model / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    with pytest.raises(InputError, match="lies outside the model folder"):
        load_catalog("m", model)


def test_tensor_listed_in_two_shards(tmp_path, sharded_family):
    model = _copy(tmp_path, sharded_family["x"])
    shards = sorted(model.glob("model-*.safetensors"))
    from safetensors.torch import load_file, save_file

    a, b = load_file(shards[0]), load_file(shards[1])
    b.update({next(iter(a)): next(iter(a.values()))})
    save_file(b, shards[1], metadata={"format": "pt"})
    with pytest.raises(InputError, match="also appears in"):
        load_catalog("m", model)


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path, llama_family):
    model = tmp_path / "evil"
    model.mkdir()
    shutil.copyfile(llama_family["math"] / "config.json", model / "config.json")
    with open(model / "pytorch_model.bin", "wb") as f:
        torch.save({"w": torch.zeros(2), "payload": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(InputError, match="refused to load: it holds more than tensors"):
        load_catalog("evil", model)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no model.safetensors, index or pytorch_model.bin"):
        load_catalog("empty", tmp_path)
