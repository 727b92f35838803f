"""Hub models: download only what a merge needs, or read just their headers over HTTP.

A hub id (``org/name``, ``org/name@revision``) is found in the standard Hugging Face cache
(``HF_HUB_CACHE``, ``HF_HOME``/hub, else ``~/.cache/huggingface/hub``) or fetched into it
through huggingface_hub (resumable, ``HF_ENDPOINT`` and ``HF_TOKEN`` honoured). Only the files a
merge reads are fetched (:func:`needed_files`). ``merge validate`` and ``merge plan`` never
download weights: :class:`HubModels` reads each safetensors header with two HTTP range
requests (8 bytes, then the header) and fetches config and tokenizer files only.
``HF_HUB_OFFLINE=1`` or ``--offline`` (:attr:`HubAccess.offline`) never opens a socket.

Example::

    access = HubAccess.from_env()
    fetch_models(["acme/base", "acme/math@v2"], access)   # into the cache, 4 at a time
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_like.errors import InputError
from mergekit_like.io.hub_resume import (
    WEIGHT_SUFFIXES,
    fetch_weights,
    storage_folder,
    tidy_partials,
)

_SHA = re.compile(r"^[0-9a-f]{40}$")
_SMALL = (  # besides the weights: config, generation config, tokenizer, chat template
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "adapter_config.json",
)
SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
MAX_PARALLEL_MODELS = 4  # models downloaded at once (fetch_models)
FILES_PER_MODEL = 4  # files of one model downloaded at once


class HubUnreachable(InputError):
    """A hub model that cannot be reached now (offline, no network, no safetensors headers):
    ``merge validate`` skips the checks that need it instead of failing."""


@dataclass(frozen=True)
class HubAccess:
    """How hub ids are reached, read from the environment when the command starts."""

    offline: bool = False
    endpoint: str = "https://huggingface.co"
    token: str | None = None
    cache_dir: str | None = None
    progress: bool = True

    @classmethod
    def from_env(cls, offline: bool = False, progress: bool = True) -> HubAccess:
        """``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_TOKEN`` and the cache, now; ``offline``
        (the ``--offline`` flag) forces offline mode."""
        env_off = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        return cls(
            offline=offline or env_off,
            endpoint=(os.environ.get("HF_ENDPOINT") or cls.endpoint).rstrip("/"),
            token=os.environ.get("HF_TOKEN") or None,
            cache_dir=hub_cache_dir(),
            progress=progress,
        )

    @property
    def cache(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)


def hub_cache_dir() -> str | None:
    """The Hugging Face hub cache folder set in the environment now, or None (the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def split_ref(ref: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of a hub id, or None for what cannot be one (a path).

    >>> split_ref("acme/tiny@v2")
    ('acme/tiny', 'v2')
    """
    repo_id, _, revision = ref.partition("@")
    if (
        repo_id.count("/") != 1
        or repo_id.startswith((".", "/", "~"))
        or "\\" in ref
        or not all(re.fullmatch(r"[\w.\-]+", p) for p in repo_id.split("/"))
    ):
        return None
    return repo_id, revision or None


def cached_snapshot(ref: str, access: HubAccess) -> Path | None:
    """The cache folder of a hub id when its weights are all there (a snapshot holding only
    a config, as other tools leave, does not count)."""
    parts = split_ref(ref)
    if parts is None:
        return None
    repo_id, revision = parts
    storage = access.cache / f"models--{repo_id.replace('/', '--')}"
    rev = revision or "main"
    commit = rev if _SHA.match(rev) else None
    if commit is None and (storage / "refs" / rev).is_file():
        commit = (storage / "refs" / rev).read_text().strip()
    folder = storage / "snapshots" / commit if commit else None
    return folder if folder is not None and weights_present(folder) else None


def weights_present(folder: Path) -> bool:
    """Whether ``folder`` holds a whole model's (or adapter's) weight files."""
    for index in (SAFE_INDEX, BIN_INDEX):
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return all((folder / s).is_file() for s in shards)
    names = (
        "model.safetensors",
        "pytorch_model.bin",
        "adapter_model.safetensors",
        "adapter_model.bin",
    )
    return any((folder / n).is_file() for n in names) or any(folder.glob("*.safetensors"))


def needed_files(files: Iterable[str], index: Mapping[str, Any] | None = None) -> list[str]:
    """The files of a repo a merge reads: config, tokenizer and chat-template files, and the
    weights: the safetensors shards and index (``index``: its parsed JSON), the .bin files
    only where there are no safetensors; a PEFT adapter's files.

    >>> needed_files(["model.safetensors", "pytorch_model.bin", "config.json", "README.md"])
    ['config.json', 'model.safetensors']
    """
    top = {f for f in files if "/" not in f}
    out = [f for f in _SMALL if f in top]
    if "adapter_model.safetensors" in top:
        out.append("adapter_model.safetensors")
    elif "adapter_model.bin" in top:
        out.append("adapter_model.bin")
    shards = sorted(set((index or {}).get("weight_map", {}).values()))
    if SAFE_INDEX in top:
        out += [SAFE_INDEX, *shards]
    elif "model.safetensors" in top:
        out.append("model.safetensors")
    elif safes := sorted(
        f for f in top if f.endswith(".safetensors") and not f.startswith("adapter_model")
    ):
        out += safes
    elif BIN_INDEX in top:
        out += [BIN_INDEX, *shards]
    elif "pytorch_model.bin" in top:
        out.append("pytorch_model.bin")
    return out


def hub_error(exc: BaseException, ref: str, access: HubAccess) -> InputError:
    """One line naming the model and what to do, for an error of huggingface_hub."""
    from huggingface_hub import errors

    where = access.endpoint
    repo_id = (split_ref(ref) or (ref, None))[0]
    if isinstance(exc, errors.GatedRepoError):
        fix = (
            "the token in HF_TOKEN has no access: accept the model's terms with that account"
            if access.token
            else "accept its terms on the model page and set HF_TOKEN to a token of that account"
        )
        return InputError(f"model {ref!r} is gated on {where}: {fix} ({where}/{repo_id})")
    if isinstance(exc, errors.RevisionNotFoundError):
        return InputError(f"model {ref!r}: no such revision on {where}; check the part after @")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return InputError(
            f"model {ref!r} was not found on {where}: check the name (a private "
            "model needs HF_TOKEN)"
        )
    if isinstance(exc, errors.OfflineModeIsEnabled | errors.LocalEntryNotFoundError):
        return offline_error(ref, access)
    if isinstance(exc, errors.HfHubHTTPError) and getattr(exc, "response", None) is not None:
        return InputError(f"model {ref!r}: {where} answered HTTP {exc.response.status_code}")
    return HubUnreachable(
        f"model {ref!r}: cannot reach {where} ({type(exc).__name__}); check "
        "the network or HF_ENDPOINT, or work offline with cached models"
    )


def is_hub_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the hub or the network (not from a bug of ours)."""
    from huggingface_hub import errors

    hub = (
        errors.HfHubHTTPError,
        errors.LocalEntryNotFoundError,
        errors.OfflineModeIsEnabled,
        errors.HFValidationError,
        OSError,
        json.JSONDecodeError,
    )
    return isinstance(exc, hub) or type(exc).__module__.split(".")[0] in {"httpx", "httpx2"}


def offline_error(ref: str, access: HubAccess) -> HubUnreachable:
    return HubUnreachable(
        f"model {ref!r} is not in the Hugging Face cache ({access.cache}) and "
        "downloads are off (--offline or HF_HUB_OFFLINE); run once online "
        "to download it"
    )


def _bar_class(label: str, show: bool) -> type:
    """huggingface_hub's tqdm, each bar labelled with the model it belongs to."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class ModelBar(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["desc"] = f"{label}: {kwargs.get('desc') or ''}".rstrip(": ")
            if not show:
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            super().set_description(f"{label}: {desc or ''}".rstrip(": "), refresh)

        def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
            super().set_description_str(f"{label}: {desc or ''}".rstrip(": "), refresh)

    return ModelBar


def remote_files(repo_id: str, revision: str | None, access: HubAccess) -> tuple[str, list[str]]:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=access.endpoint, token=access.token).model_info(
        repo_id, revision=revision
    )
    return str(info.sha), [s.rfilename for s in info.siblings or []]


def fetch_small_file(repo_id: str, commit: str, name: str, access: HubAccess) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            repo_id,
            name,
            revision=commit,
            cache_dir=access.cache_dir,
            endpoint=access.endpoint,
            token=access.token,
            tqdm_class=_bar_class(repo_id, False),  # kilobytes: no bar of their own
        )
    )


def _plan_files(repo_id: str, revision: str | None, access: HubAccess) -> tuple[str, list[str]]:
    """The commit and the files to fetch (reading the weight index first, when sharded)."""
    commit, files = remote_files(repo_id, revision, access)
    index = None
    for name in (SAFE_INDEX, BIN_INDEX):
        if name in files and (name == SAFE_INDEX or "model.safetensors" not in files):
            index = json.loads(fetch_small_file(repo_id, commit, name, access).read_text())
            break
    return commit, needed_files(files, index)


def download_model(ref: str, access: HubAccess) -> Path:
    """Fetch the files a merge needs of one hub id into the cache; returns its folder."""
    if (found := cached_snapshot(ref, access)) is not None:
        return found
    parts = split_ref(ref)
    if parts is None:
        raise InputError(f"model {ref!r} is not a local folder or a hub id (org/name)")
    if access.offline:
        raise offline_error(ref, access)
    from huggingface_hub import snapshot_download

    repo_id, revision = parts
    try:
        commit, wanted = _plan_files(repo_id, revision, access)
        weights = [n for n in wanted if n.endswith(WEIGHT_SUFFIXES)]
        # resumable across runs, one bar for the model; snapshot_download links them in
        left = fetch_weights(repo_id, commit, weights, access, ref, FILES_PER_MODEL)
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=wanted,
            cache_dir=access.cache_dir,
            endpoint=access.endpoint,
            token=access.token,
            max_workers=FILES_PER_MODEL,
            tqdm_class=_bar_class(ref, access.progress and left),
        )
    except Exception as exc:
        if not is_hub_failure(exc):
            raise
        raise hub_error(exc, ref, access) from None
    tidy_partials(storage_folder(repo_id, access), access)  # orphans of killed runs
    return Path(path)


def fetch_models(
    refs: Sequence[str], access: HubAccess, parallel: int = MAX_PARALLEL_MODELS
) -> dict[str, Path]:
    """Download the hub ids among ``refs`` that the cache lacks, ``parallel`` at a time.

    Every failure is reported, one line per model; local folders are left alone.
    """
    hub = [r for r in dict.fromkeys(refs) if split_ref(r) and not Path(r).expanduser().exists()]
    if not hub:
        return {}
    problems, out = [], {}
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hub)))) as pool:
        futures = {ref: pool.submit(download_model, ref, access) for ref in hub}
    for ref, fut in futures.items():
        try:
            out[ref] = fut.result()
        except InputError as exc:
            problems.extend(exc.problems)
    if problems:
        raise InputError(problems)
    return out


def read_remote_header(
    repo_id: str, commit: str, name: str, access: HubAccess, folder: Path
) -> dict[str, Any]:
    """A hub safetensors file's tensors, from two range requests (8 bytes, then the header).

    The tensors point at ``folder / name``, where a later download puts the file.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    from mergekit_like.io.safetensors_header import MAX_HEADER, parse_header

    url = hf_hub_url(repo_id, name, revision=commit, endpoint=access.endpoint)
    headers = build_hf_headers(token=access.token)

    def read(start: int, length: int) -> tuple[bytes, int]:
        rng = {
            **headers,
            "Range": f"bytes={start}-{start + length - 1}",
            "Accept-Encoding": "identity",
        }
        with get_session().stream(
            "GET", url, headers=rng, follow_redirects=True, timeout=30
        ) as resp:
            hf_raise_for_status(resp)
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            got = b""
            for chunk in resp.iter_bytes():  # a server ignoring Range: stop early
                got += chunk
                if len(got) >= length + (0 if resp.status_code == 206 else start):
                    break
        if resp.status_code != 206:
            got = got[start:]
        size = int(total) if total.isdigit() else -1
        return got[:length], size

    first, size = read(0, 8)
    path = folder / name
    if len(first) < 8:
        raise InputError(f"{repo_id}/{name}: not a safetensors file (shorter than 8 bytes)")
    (hlen,) = struct.unpack("<Q", first)
    if hlen > MAX_HEADER or (size >= 0 and 8 + hlen > size):
        raise InputError(f"{repo_id}/{name}: corrupt safetensors header (length {hlen})")
    raw, _ = read(8, hlen)
    return parse_header(raw, size if size >= 0 else 8 + hlen + 2**62, path)
