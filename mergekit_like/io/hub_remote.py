"""Catalogs of hub models that are not downloaded: headers over HTTP, for validate and plan.

:class:`HubModels` opens a recipe's models the way :func:`~mergekit_like.io.catalog.open_model`
does, except that a hub id missing from the cache is catalogued remotely: its config and
tokenizer files (and the shard index) are fetched into the cache, and each safetensors
header is read with two range requests. No weight byte is transferred; the tensors point
where a later download puts the files.

Example::

    models = HubModels(HubAccess.from_env())
    plan = build_plan(loaded, models=models)   # `merge plan` of a hub recipe
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mergekit_like.errors import InputError
from mergekit_like.io.catalog import ModelCatalog, find_local, load_catalog
from mergekit_like.io.hub import (
    SAFE_INDEX,
    HubAccess,
    HubUnreachable,
    fetch_small_file,
    hub_error,
    is_hub_failure,
    needed_files,
    offline_error,
    read_remote_header,
    remote_files,
    split_ref,
)
from mergekit_like.io.paths import shown
from mergekit_like.io.safetensors_header import TensorInfo


class HubModels:
    """Opens models for ``merge validate`` and ``merge plan`` without downloading weights.

    Each reference is opened once per instance (the remote headers are read once).
    """

    def __init__(self, access: HubAccess) -> None:
        self.access = access
        self._opened: dict[str, ModelCatalog] = {}

    def __call__(
        self, ref: str, recipe_dir: Path | None = None, named: Mapping[str, Path] | None = None
    ) -> ModelCatalog:
        if ref not in self._opened:
            self._opened[ref] = self._open(ref, recipe_dir, named or {})
        return self._opened[ref]

    def _open(self, ref: str, recipe_dir: Path | None, named: Mapping[str, Path]) -> ModelCatalog:
        if "+" not in ref:
            return self._whole(ref, recipe_dir, named)
        base_ref, _, adapter_ref = ref.partition("+")
        base = self._whole(base_ref, recipe_dir, named)
        from mergekit_like.io.lora import apply_adapter

        local = named.get(adapter_ref) or find_local(adapter_ref, recipe_dir)
        if local is not None:
            return apply_adapter(base, ref, local)
        folder, tensors, _ = self._remote(adapter_ref, adapter=True)
        return apply_adapter(base, ref, folder, tensors)

    def _whole(self, ref: str, recipe_dir: Path | None, named: Mapping[str, Path]) -> ModelCatalog:
        local = named.get(ref) or find_local(ref, recipe_dir)
        if local is not None:
            return load_catalog(ref, local)
        folder, tensors, config = self._remote(ref, adapter=False)
        return ModelCatalog(ref, folder, MappingProxyType(tensors), MappingProxyType(config))

    def _remote(
        self, ref: str, adapter: bool
    ) -> tuple[Path, dict[str, TensorInfo], dict[str, Any]]:
        parts = split_ref(ref)
        if parts is None:
            raise HubUnreachable(
                f"model {shown(ref)} is not a local folder on this machine (nor a hub id)"
            )
        if self.access.offline:
            raise offline_error(ref, self.access)
        repo_id, revision = parts
        try:
            commit, files = remote_files(repo_id, revision, self.access)
            folder = (
                self.access.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
            )
            for name in needed_files(files):
                if not name.endswith((".safetensors", ".bin")):
                    fetch_small_file(repo_id, commit, name, self.access)
            shards = _header_files(ref, files, folder, adapter)
            tensors: dict[str, TensorInfo] = {}
            for shard in shards:
                for name, info in read_remote_header(
                    repo_id, commit, shard, self.access, folder
                ).items():
                    if name in tensors:
                        raise InputError(
                            f"{ref}: tensor {name!r} is in {shard} and {tensors[name].file.name}"
                        )
                    tensors[name] = info
        except InputError:
            raise
        except Exception as exc:
            if not is_hub_failure(exc):
                raise
            raise hub_error(exc, ref, self.access) from None
        config: dict[str, Any] = {}
        if (folder / "config.json").is_file():
            try:
                config = json.loads((folder / "config.json").read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{ref}: config.json: unreadable JSON ({exc})") from None
        return folder, tensors, config


def _header_files(ref: str, files: list[str], folder: Path, adapter: bool) -> list[str]:
    """The safetensors files whose headers describe the model (or the adapter)."""
    if adapter:
        if "adapter_model.safetensors" in files:
            return ["adapter_model.safetensors"]
        raise HubUnreachable(
            f"adapter {ref!r} has no adapter_model.safetensors on the hub; "
            "its tensors are known only after download"
        )
    if SAFE_INDEX in files:
        try:
            weight_map = json.loads((folder / SAFE_INDEX).read_text())["weight_map"]
            return sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise InputError(
                f"{ref}: {SAFE_INDEX}: unreadable index (expected a JSON 'weight_map')"
            ) from None
    weights = needed_files(files)
    safes = [f for f in weights if f.endswith(".safetensors")]
    if not safes:
        raise HubUnreachable(
            f"model {ref!r} has no safetensors weights on the hub (only .bin "
            "or none): its tensors are known only after download"
        )
    return safes
