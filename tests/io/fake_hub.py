"""A small Hugging Face hub on 127.0.0.1 for tests: the routes huggingface_hub 2.x uses.

Serves model repos built from local folders: repo info (``/api/models/{repo}`` and
``/revision/{rev}``), the file tree (``/api/models/{repo}/tree/{rev}``) and files
(``/{repo}/resolve/{rev}/{path}``, HEAD and GET, with ``Range``), with the ``ETag`` and
``X-Repo-Commit`` headers huggingface_hub needs and no Xet headers, so plain HTTP is used.
A gated repo answers file requests with 401 (no token) or 403 (a wrong token), as the hub
does; a missing repo answers 404 ``RepoNotFound``. Every request is logged and the body bytes
served are counted per file, so tests can tell what was transferred.

Example::

    with FakeHub() as hub:
        hub.add_repo("acme/tiny", folder)
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

GOOD_TOKEN = "hf_fake_good_token"
_LFS = (".safetensors", ".bin", ".pt", ".onnx", ".model")


@dataclass
class FakeRepo:
    """One repo: its files (path -> bytes) at one commit."""

    files: dict[str, bytes]
    sha: str
    gated: bool = False


@dataclass
class Stall:
    """Serve the first ``after`` bytes of ``path`` (a whole-file GET; of ``repo`` alone, when
    given) once, then hold the connection until released (``drop``: close it at once, as a
    broken network does)."""

    path: str
    after: int
    drop: bool = False
    repo: str | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    taken: bool = False  # set under the hub's lock by the one request that stalls


class FakeHub:
    """The server: add repos, start it (a context manager), read its counters."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.served: Counter[tuple[str, str]] = Counter()  # (repo, path) -> body bytes
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.stalls: list[Stall] = []
        self.weight_delay = 0.0  # seconds each weight-file GET holds its body back
        self.in_flight: Counter[str] = Counter()  # repo -> weight-file GETs being served
        self.max_repos_in_flight = 0  # most repos with a weight-file GET served at once
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- set-up -----------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        folder: Path | None = None,
        *,
        gated: bool = False,
        extra: dict[str, bytes] | None = None,
        skip: tuple[str, ...] = (),
    ) -> FakeRepo:
        """Serve ``folder``'s files (and ``extra``) as ``repo_id``; ``skip`` leaves files out."""
        files: dict[str, bytes] = {}
        if folder is not None:
            for f in sorted(folder.rglob("*")):
                rel = f.relative_to(folder).as_posix()
                if f.is_file() and rel not in skip:
                    files[rel] = f.read_bytes()
        files.update(extra or {})
        sha = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        repo = FakeRepo(files, sha, gated)
        self.repos[repo_id] = repo
        return repo

    def weight_bytes(self, repo_id: str | None = None) -> int:
        """Body bytes served of weight files (.safetensors, .bin), all repos or one."""
        return sum(
            n
            for (r, p), n in self.served.items()
            if p.endswith((".safetensors", ".bin")) and (repo_id is None or r == repo_id)
        )

    def reset_counts(self) -> None:
        with self._lock:
            self.served.clear()
            self.requests.clear()
            self.max_repos_in_flight = 0

    # -- running ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for stall in self.stalls:
            stall.release.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


_RESOLVE = re.compile(r"^/(?:models/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.fake._lock:
            self.fake.requests.append((self.command, path, self.headers.get("Range")))
        if m := _RESOLVE.match(path):
            self._file(m.group(1), m.group(2), m.group(3), head)
        elif m := _API.match(path):
            self._api(m.group(1), m.group(2), m.group(3), head)
        else:
            self._error(404, "EntryNotFound", "no such route")

    def _repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _api(self, repo_id: str, kind: str | None, rev: str | None, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if rev is not None and rev not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return
        if kind == "tree":
            body = [
                {
                    "type": "file",
                    "oid": hashlib.sha1(data).hexdigest(),
                    "size": len(data),
                    "path": name,
                    **(
                        {
                            "lfs": {
                                "oid": hashlib.sha256(data).hexdigest(),
                                "size": len(data),
                                "pointerSize": 134,
                            }
                        }
                        if name.endswith(_LFS)
                        else {}
                    ),
                }
                for name, data in sorted(repo.files.items())
            ]
        else:
            body = {
                "_id": repo.sha[:24],
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.sha,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(repo.files)],
            }
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

    def _file(self, repo_id: str, rev: str, name: str, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if rev not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return
        if repo.gated:
            auth = self.headers.get("Authorization", "")
            if not auth:
                self._error(
                    401,
                    "GatedRepo",
                    "Access to model is restricted. You must have "
                    "access to it and be authenticated to access it. Please log in.",
                )
                return
            if auth != f"Bearer {GOOD_TOKEN}":
                self._error(
                    403,
                    "GatedRepo",
                    "Access to model is restricted and you are not in the authorized list.",
                )
                return
        data = repo.files.get(name)
        if data is None:
            self._error(404, "EntryNotFound", "Entry not found")
            return
        etag = (
            hashlib.sha256(data).hexdigest()
            if name.endswith(_LFS)
            else hashlib.sha1(data).hexdigest()
        )
        headers = {
            "ETag": f'"{etag}"',
            "X-Repo-Commit": repo.sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start, end, status = 0, len(data), 200
        if (rng := self.headers.get("Range")) and (m := re.match(r"bytes=(\d*)-(\d*)", rng)):
            start = int(m.group(1) or 0)
            end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        self._send(status, data[start:end], headers, head, counter=(repo_id, name, start))

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            status,
            body,
            {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"},
            self.command == "HEAD",
        )

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str],
        head: bool,
        counter: tuple[str, str, int] | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        weight = counter is not None and counter[1].endswith((".safetensors", ".bin"))
        if weight:
            self._track(counter[0], +1)
        try:
            if weight and self.fake.weight_delay:
                time.sleep(self.fake.weight_delay)
            self._body(status, body, counter)
        finally:
            if weight:
                self._track(counter[0], -1)

    def _track(self, repo_id: str, step: int) -> None:
        with self.fake._lock:
            self.fake.in_flight[repo_id] += step
            busy = sum(1 for n in self.fake.in_flight.values() if n > 0)
            self.fake.max_repos_in_flight = max(self.fake.max_repos_in_flight, busy)

    def _body(self, status: int, body: bytes, counter: tuple[str, str, int] | None) -> None:
        with self.fake._lock:  # one request takes a stall, even when several arrive at once
            stall = next(
                (
                    s
                    for s in self.fake.stalls
                    if counter
                    and s.path == counter[1]
                    and s.repo in (None, counter[0])
                    and status == 200
                    and not s.taken
                ),
                None,
            )
            if stall is not None:
                stall.taken = True
        if stall is not None:  # send part of the body, then hang until released
            part = body[: stall.after]
            self._write(part, counter)
            stall.reached.set()
            if not stall.drop:
                stall.release.wait(30)
            self.close_connection = True
            return
        self._write(body, counter)

    def _write(self, body: bytes, counter: tuple[str, str, int] | None) -> None:
        # Counted before sending: a client may act on the bytes before this thread runs on.
        if counter is not None:
            with self.fake._lock:
                self.fake.served[counter[0], counter[1]] += len(body)
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            return
