"""What an ingredient model holds, from its headers alone: tensor names, shapes, dtypes, config.

``resolve_model`` turns a recipe's model reference (a local folder or a Hugging Face hub id
found in the local hub cache; :mod:`mergekit_like.io.hub` downloads) into a folder;
``load_catalog`` reads that folder's safetensors headers (or index) and config.json into a
frozen :class:`ModelCatalog`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mergekit_like.errors import InputError
from mergekit_like.io.hub import HubAccess, cached_snapshot, hub_cache_dir, split_ref
from mergekit_like.io.paths import expand_user, is_dir, is_file, shown
from mergekit_like.io.safetensors_header import TensorInfo, read_header

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


@dataclass(frozen=True)
class ModelCatalog:
    """The tensors and config of one ingredient model, read from headers only."""

    ref: str
    path: Path
    tensors: Mapping[str, TensorInfo]
    config: Mapping[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def local_folder(ref: str, recipe_dir: Path | None = None) -> Path | None:
    """The local folder a model reference names (as written, then beside the recipe; a
    trailing ``@revision`` is ignored, as mergekit ignores it), or None when it names none
    (then it may be a hub id)."""
    for text in dict.fromkeys((ref, ref.partition("@")[0])):  # a folder named with '@' first
        candidates = [expand_user(text, "model")]
        if "\\" in text:  # a Windows-style path written on Windows
            candidates.append(expand_user(text.replace("\\", "/"), "model"))
        if recipe_dir is not None:
            candidates += [recipe_dir / c for c in candidates if not c.is_absolute()]
        for cand in candidates:
            if is_dir(cand):
                return cand.resolve()
    return None


def find_local(ref: str, recipe_dir: Path | None = None) -> Path | None:
    """The folder of a model reference on this machine, or None.

    A reference is a local folder (relative to the working directory, then to the recipe's
    folder) or a hub id ``org/name`` whose weights are all in the Hugging Face cache
    (``HF_HUB_CACHE``/``HF_HOME``); either may end in ``@revision`` (mergekit's syntax; a
    local folder's revision is ignored, as mergekit ignores it).
    """
    if ref.count("@") > 1:
        raise InputError(f"model {shown(ref)}: more than one '@'; write path@revision")
    local = local_folder(ref, recipe_dir)
    if local is not None:
        return local
    return cached_snapshot(ref, HubAccess.from_env())


def resolve_model(ref: str, recipe_dir: Path | None = None) -> Path:
    """Find the folder of a model reference on this machine (:func:`find_local`), offline.

    Raises ``InputError`` if it is not there: ``merge`` fetches hub ids beforehand
    (:func:`mergekit_like.io.hub.fetch_models`), unless offline.
    """
    found = find_local(ref, recipe_dir)
    if found is not None:
        return found
    hint = ("; `merge` downloads hub models unless --offline or HF_HUB_OFFLINE is set"
            if split_ref(ref) else "")
    raise InputError(f"model {shown(ref)} is not a local folder and not in the Hugging Face "
                     f"cache ({hub_cache_dir() or '~/.cache/huggingface/hub'}){hint}")


def read_json(path: Path) -> Any:
    """A JSON file's value: strict JSON in UTF-8 (no NaN or Infinity), else ``InputError``."""

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_constant=constant)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: unreadable JSON ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:80]
        raise InputError(f"{path}: unreadable JSON ({reason})") from None


def _index_files(folder: Path, index_name: str) -> list[Path]:
    index_path = folder / index_name
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise InputError(f"{index_path}: weight_map: expected a JSON object mapping tensor "
                         "names to shard files")
    files = []
    for shard in weight_map.values():
        if not isinstance(shard, str) or not shard or "\x00" in shard:
            raise InputError(f"{index_path}: weight_map: shard {shown(str(shard))} is not a "
                             "file name")
    for shard in dict.fromkeys(weight_map.values()):
        try:
            shard_path = (folder / shard).resolve()
        except (OSError, ValueError):
            shard_path = folder / shard
        if folder.resolve() not in shard_path.parents:
            raise InputError(f"{index_path}: weight_map: shard {shown(shard)} lies outside the "
                             "model folder")
        if not is_file(shard_path):
            raise InputError(f"{index_path}: weight_map: names shard {shown(shard)}, which is "
                             "missing")
        files.append(shard_path)
    return files


def _collect(files: list[Path], reader: Any) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in reader(f).items():
            if name in tensors:
                raise InputError(f"{f}: tensor {name!r} also appears in {tensors[name].file.name}")
            tensors[name] = info
    return tensors


def open_model(ref: str, recipe_dir: Path | None = None,
               named: Mapping[str, Path] | None = None) -> ModelCatalog:
    """Resolve and catalog a model reference, including mergekit's ``model+lora_adapter``.

    ``named`` maps the names of earlier documents of a multi-document recipe to their outputs.
    """
    named = named or {}

    def find(part: str) -> Path:
        return named[part] if part in named else resolve_model(part, recipe_dir)

    if "+" in ref:
        base_ref, _, adapter_ref = ref.partition("+")
        base = load_catalog(base_ref, find(base_ref))
        from mergekit_like.io.lora import apply_adapter

        return apply_adapter(base, ref, find(adapter_ref))
    return load_catalog(ref, find(ref))


def load_catalog(ref: str, folder: Path) -> ModelCatalog:
    """Read a model folder's tensor headers and config.json (no tensor data is read)."""
    if (folder / SAFE_INDEX).is_file():
        tensors = _collect(_index_files(folder, SAFE_INDEX), read_header)
    elif (folder / "model.safetensors").is_file():
        tensors = read_header(folder / "model.safetensors")
    elif (folder / BIN_INDEX).is_file():
        from mergekit_like.io.pickle_checkpoint import read_bin_header

        tensors = _collect(_index_files(folder, BIN_INDEX), read_bin_header)
    elif (folder / "pytorch_model.bin").is_file():
        from mergekit_like.io.pickle_checkpoint import read_bin_header

        tensors = read_bin_header(folder / "pytorch_model.bin")
    else:
        found = sorted(folder.glob("*.safetensors"))
        if not found:
            raise InputError(f"{folder}: no model.safetensors, index or pytorch_model.bin found")
        tensors = _collect(found, read_header)
    config: dict[str, Any] = {}
    config_path = folder / "config.json"
    if config_path.is_file():
        config = read_json(config_path)
        if not isinstance(config, dict):
            raise InputError(f"{config_path}: expected a JSON object (a model config), got "
                             f"{type(config).__name__ if config is not None else 'null'}")
    return ModelCatalog(ref, folder, MappingProxyType(tensors), MappingProxyType(config))
