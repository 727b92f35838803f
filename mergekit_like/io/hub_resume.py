"""Weight files that survive a killed download: fetched into the cache's blob layout through a
partial file with a fixed name, which the next run continues with an HTTP ``Range`` request.

huggingface_hub 2.x resumes a broken connection only within one process: it writes each file
to ``<blob>.<random>.incomplete`` and, when the process is killed, leaves that file orphaned
and starts the next run from byte 0. For multi-GB shards that is the difference between
redoing minutes and hours of transfer, so :func:`fetch_weights` downloads weight files itself,
with huggingface_hub's own HTTP code (:func:`huggingface_hub.file_download.http_get`, which
sends the ``Range`` header), its file lock and its metadata request, into
``blobs/<etag>.incomplete``; the finished blob is then linked into the snapshot by
``snapshot_download`` as any cached blob is. Orphans of earlier runs are adopted (weights) or
removed (:func:`tidy_partials`).

Example::

    fetch_weights("acme/base", commit, ["model.safetensors"], access, "acme/base", 4)
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol


class AccessLike(Protocol):
    """What is read here of :class:`mergekit_like.io.hub.HubAccess`."""

    @property
    def cache(self) -> Path: ...

    endpoint: str
    token: str | None
    progress: bool


WEIGHT_SUFFIXES = (".safetensors", ".bin")
_ORPHAN = re.compile(r"^(?P<etag>.+)\.[0-9a-f]{8}\.incomplete$")  # huggingface_hub 2.x temp
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def storage_folder(repo_id: str, access: AccessLike) -> Path:
    """The cache folder of a model repo (``models--org--name``)."""
    return access.cache / f"models--{repo_id.replace('/', '--')}"


def partial_path(storage: Path, etag: str) -> Path:
    """Where the unfinished download of blob ``etag`` is kept between runs."""
    return storage / "blobs" / f"{etag}.incomplete"


def _lock_path(storage: Path, etag: str, access: AccessLike) -> Path:
    """huggingface_hub's lock of a blob, so its own downloads and ours never overlap."""
    return access.cache / ".locks" / storage.name / f"{etag}.lock"


def tidy_partials(storage: Path, access: AccessLike, adopt: str | None = None) -> None:
    """Adopt or remove the partial files in a repo's blobs.

    With ``adopt`` (a weight blob's etag), the longest orphan ``<etag>.<random>.incomplete``
    of a killed huggingface_hub download of that blob becomes its fixed-name partial, which
    the download then continues. Without it (the model is complete), every partial file is
    removed. A file whose blob lock is held (a download of it under way in another process)
    is left alone.
    """
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock

    blobs = storage / "blobs"
    for path in sorted(blobs.glob("*.incomplete")) if blobs.is_dir() else []:
        match = _ORPHAN.match(path.name)
        etag = match.group("etag") if match else path.name.removesuffix(".incomplete")
        if adopt is not None and (etag != adopt or not match):
            continue
        lock = _lock_path(storage, etag, access)
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with WeakFileLock(lock, timeout=0.05):
                fixed = partial_path(storage, etag)
                if not path.exists():
                    continue
                if adopt is None or (blobs / etag).exists():
                    path.unlink()
                elif not fixed.exists() or fixed.stat().st_size < path.stat().st_size:
                    os.replace(path, fixed)
                else:
                    path.unlink()
        except Timeout:
            continue


def fetch_weights(
    repo_id: str, commit: str, names: list[str], access: AccessLike, label: str, workers: int
) -> bool:
    """Download the weight files ``names`` of ``repo_id`` at ``commit`` into the cache's
    blobs, ``workers`` at a time, each going on from the bytes a killed run left; one
    progress bar for them all, labelled ``label`` (unless ``access.progress`` is off).

    Returns whether some were left to ``snapshot_download`` (files in Xet storage, which
    reconstructs from its own chunk cache).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import tqdm

    storage = storage_folder(repo_id, access)
    todo, left = [], False
    for name in names:
        if (storage / "snapshots" / commit / name).exists():
            continue
        url = hf_hub_url(repo_id, name, revision=commit, endpoint=access.endpoint)
        meta = get_hf_file_metadata(url, token=access.token, endpoint=access.endpoint)
        if meta.etag is None or meta.xet_file_data is not None:
            left = True
        elif not (storage / "blobs" / meta.etag).exists():
            todo.append((name, meta))
    if not todo:
        return left
    sizes = [m.size for _, m in todo]
    bar = tqdm(
        total=None if None in sizes else sum(sizes),  # type: ignore[arg-type]
        desc=f"{label}: {len(todo)} weight file{'s' * (len(todo) > 1)}",
        unit="B",
        unit_scale=True,
        disable=not access.progress,
    )
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        part_bar = _into(bar)
        for _ in pool.map(lambda t: _fetch_blob(storage, *t, access, part_bar), todo):
            pass
    return left


def _fetch_blob(storage: Path, name: str, meta: Any, access: AccessLike, bar: type) -> None:
    """One blob, under huggingface_hub's lock of it, continuing its partial file."""
    from huggingface_hub.utils import WeakFileLock

    tidy_partials(storage, access, adopt=meta.etag)
    blob = storage / "blobs" / meta.etag
    lock = _lock_path(storage, meta.etag, access)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        if blob.exists():
            return
        part = partial_path(storage, meta.etag)
        resumed = _continue(part, meta.location, meta.size, name, access, bar)
        if resumed and not _matches(part, meta.etag):
            part.unlink()  # the kept bytes were not this file's: once more from byte 0
            _continue(part, meta.location, meta.size, name, access, bar)
        os.replace(part, blob)


def _into(bar: Any) -> type:
    """A tqdm stand-in for ``http_get`` that adds each file's bytes to the model's ``bar``."""
    lock = threading.Lock()

    class Part:
        def __init__(self, *args: Any, initial: int = 0, **kwargs: Any) -> None:
            self.update(initial)  # bytes kept from a killed run count as done

        def __enter__(self) -> Part:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: float | None = 1) -> None:
            with lock:
                bar.update(n or 0)

        def close(self) -> None:
            pass

    return Part


def _continue(
    part: Path, url: str, size: int | None, name: str, access: AccessLike, bar: type | None
) -> int:
    """Append the missing bytes of ``url`` to ``part`` (from byte 0 when it is absent);
    returns how many bytes were kept from before."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        have = 0  # not a prefix of this file
    with part.open("r+b" if part.exists() else "wb") as f:
        f.truncate(have)
        f.seek(have)
        http_get(
            url,
            f,
            resume_size=have,
            headers=build_hf_headers(token=access.token),
            expected_size=size,
            displayed_filename=name,
            tqdm_class=bar,
        )
    return have


def _matches(path: Path, etag: str) -> bool:
    """Whether a resumed file is the blob named ``etag`` (an LFS etag is the file's sha256;
    any other etag cannot be checked here and is trusted)."""
    if not _SHA256.match(etag):
        return True
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest() == etag
