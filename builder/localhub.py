"""A local, Hugging Face Hub-compatible HTTP server backed by a folder (stdlib only).

Two uses:
- the offline stand-in for the Hub in tests: point `HF_ENDPOINT` (or `HfApi(endpoint=...)`) at `LocalHub.url`
  and the real, unmodified `huggingface_hub` / `datasets` clients talk to it;
- NanoFlux's "local repository folder" target: a repo stored on disk with the same files, commits and version
  tags as on the Hub, served with `python -m builder.localhub --root DIR --port 7861` so that
  `HF_ENDPOINT=http://127.0.0.1:7861 python -c 'import datasets; datasets.load_dataset("org/name", revision="v1")'`
  loads any version.

Storage (plain files, inspectable; repos are snapshots, not git):

    root/{datasets,models,spaces}/<namespace>/<name>/
        meta.json               {"private": bool, "created_at": iso}
        refs.json               {"branches": {"main": sha}, "tags": {"v1": sha}}
        commits/<sha>.json      {"parent", "title", "description", "author", "date", "files": {path: entry}}
        blobs/<sha256>          file contents, content-addressed
    where a file entry is {"sha256", "size", "oid"} (+ "lfs": true); oid is the git blob sha1 of the content, or of
    the LFS pointer for LFS files, as the Hub reports it.

A commit id is the sha1 of its canonical JSON. Every file is written atomically (temp file + os.replace) and a commit
becomes visible only when `refs.json` is replaced, so a crash mid-commit leaves no visible change.

Uploads: as on the Hub, files matching an LFS pattern of the repo's `.gitattributes` (the initial one lists
*.parquet, *.arrow, ...) or over 10 MiB are uploaded through the LFS batch API (a signed PUT to this server),
the rest travel base64 in the commit call. Xet is not implemented: clients must run with `HF_HUB_DISABLE_XET=1`
when the `hf_xet` package is installed (it is not a NanoFlux dependency).

Endpoints (what huggingface_hub 2.4 and datasets 5.2 call): whoami-v2, repos/create, repos/delete, validate-yaml,
repo info (+ /revision/{rev}), preupload, commit, tag, branch, refs, tree (paginated), paths-info, commits,
settings, auth-check, LFS batch + upload + verify, GET/HEAD resolve (Range supported), and with a `JobRunner` the
HF Jobs API (run, inspect, list, logs, cancel; see builder.localjobs). Anything else is a
plain 404, which is what clients expect for optional services (parquet export, croissant, dataset viewer).
Repo ids are always `namespace/name`. Pull requests, Xet and super-squash are not implemented.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from builder.journal import write_atomic
from builder.localjobs import JobError, JobRunner

__all__ = ["HubError", "JobRunner", "LocalHub", "RepoStore", "main"]

logger = logging.getLogger(__name__)

REPO_TYPES = ("dataset", "model", "space")
URL_PREFIXES = {"dataset": "datasets/", "model": "", "space": "spaces/"}
DEFAULT_BRANCH = "main"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_INITIAL_GITATTRIBUTES = (
    "*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    "*.arrow filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
)
_TREE_PAGE, _TREE_PAGE_EXPANDED, _COMMITS_PAGE = 1000, 50, 50
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses regular files above this size


class HubError(Exception):
    """An error answered in the Hub's shape: `{"error": message}`, status, and `X-Error-Code` when relevant."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _lfs_patterns(gitattributes: str) -> list[str]:
    return [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line and line.split()]


def _matches_lfs(path: str, patterns: Iterable[str]) -> bool:
    """git-attributes style: a pattern without "/" matches the file name, otherwise the whole path."""
    name = PurePosixPath(path).name
    for pattern in patterns:
        pattern = pattern.lstrip("/")
        if fnmatch.fnmatchcase(path if "/" in pattern else name, pattern.replace("**/", "*")):
            return True
    return False


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def _validate_repo_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    if parts[0] == ".git":
        raise HubError(400, f"Cannot write inside .git: {path!r}")
    return path


def parse_front_matter(text: str) -> dict[str, Any] | None:
    """The YAML front matter of a README (None if absent). Raises ValueError if it is not valid YAML."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        return None
    try:
        import yaml  # a NanoFlux dependency; the server itself runs without it (no cardData then)
    except ImportError:  # pragma: no cover
        return None
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from e
    if data is not None and not isinstance(data, dict):
        raise ValueError("YAML front matter must be a mapping")
    return data or {}


# ---------------------------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    """A stored commit (immutable)."""

    sha: str
    parent: str | None
    title: str
    description: str
    author: str
    date: str
    files: dict[str, dict[str, Any]]  # path -> {"sha256", "size", "oid"} (+ "lfs": True)


class RepoStore:
    """Repos on disk under `root`. Thread-safe: writes are serialized; reads rely on atomic file replacement."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._commit_cache: dict[tuple[Path, str], Commit] = {}

    # -- repos -------------------------------------------------------------------------------------

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type!r}")
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME_RE.match(p) and ".." not in p for p in parts):
            raise HubError(400, f"Invalid repo id: {repo_id!r} (expected 'namespace/name')")
        return self.root / f"{repo_type}s" / parts[0] / parts[1]

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "refs.json").is_file()

    def _require(self, repo_type: str, repo_id: str) -> Path:
        d = self.repo_dir(repo_type, repo_id)
        if not (d / "refs.json").is_file():
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return d

    def list_repos(self, repo_type: str) -> list[str]:
        base = self.root / f"{repo_type}s"
        found = (f"{p.parent.parent.name}/{p.parent.name}" for p in base.glob("*/*/refs.json"))
        return sorted(r for r in found if not r.split("/")[1].startswith("."))  # skip repos being deleted

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool = False, author: str = "localhub") -> str:
        """Create a repo with an initial commit holding `.gitattributes` (as the Hub does); returns its sha."""
        with self._lock:
            d = self.repo_dir(repo_type, repo_id)
            if (d / "refs.json").is_file():
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            write_atomic(d / "meta.json", _dump({"private": bool(private), "created_at": _now_iso()}))
            files = {".gitattributes": self._put_blob(d, _INITIAL_GITATTRIBUTES.encode())}
            sha = self._write_commit(d, None, "initial commit", "", author, files)
            write_atomic(d / "refs.json", _dump({"branches": {DEFAULT_BRANCH: sha}, "tags": {}}))
            logger.info("created %s repo %s", repo_type, repo_id)
            return sha

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            d = self._require(repo_type, repo_id)
            trash = d.with_name(f".{d.name}.deleted-{uuid.uuid4().hex}")
            os.replace(d, trash)  # invisible at once; removal can take its time
            shutil.rmtree(trash, ignore_errors=True)

    def meta(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        return json.loads((self._require(repo_type, repo_id) / "meta.json").read_text())

    def update_meta(self, repo_type: str, repo_id: str, **changes: Any) -> None:
        with self._lock:
            d = self._require(repo_type, repo_id)
            meta = json.loads((d / "meta.json").read_text())
            meta.update(changes)
            write_atomic(d / "meta.json", _dump(meta))

    # -- refs and commits --------------------------------------------------------------------------

    def refs(self, repo_type: str, repo_id: str) -> dict[str, dict[str, str]]:
        return json.loads((self._require(repo_type, repo_id) / "refs.json").read_text())

    def resolve(self, repo_type: str, repo_id: str, revision: str | None) -> str:
        """Commit sha of a branch, tag (also as refs/heads/x, refs/tags/x) or full commit sha."""
        d = self._require(repo_type, repo_id)
        revision = revision or DEFAULT_BRANCH
        refs = json.loads((d / "refs.json").read_text())
        if revision.startswith("refs/heads/"):
            sha = refs["branches"].get(revision[len("refs/heads/") :])
        elif revision.startswith("refs/tags/"):
            sha = refs["tags"].get(revision[len("refs/tags/") :])
        else:
            sha = refs["branches"].get(revision) or refs["tags"].get(revision)
        if sha is None and _SHA1_RE.match(revision) and (d / "commits" / f"{revision}.json").is_file():
            sha = revision
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    def commit(self, repo_type: str, repo_id: str, sha: str) -> Commit:
        d = self._require(repo_type, repo_id)
        key = (d, sha)
        cached = self._commit_cache.get(key)
        if cached is None:
            raw = json.loads((d / "commits" / f"{sha}.json").read_text())
            cached = Commit(sha=sha, **raw)
            self._commit_cache[key] = cached
        return cached

    def history(self, repo_type: str, repo_id: str, sha: str) -> Iterator[Commit]:
        """Commits from `sha` back to the first one (newest first)."""
        current: str | None = sha
        while current is not None:
            c = self.commit(repo_type, repo_id, current)
            yield c
            current = c.parent

    def blob_path(self, repo_type: str, repo_id: str, sha256: str) -> Path:
        return self._require(repo_type, repo_id) / "blobs" / sha256

    def _put_blob(self, d: Path, data: bytes) -> dict[str, Any]:
        sha256 = hashlib.sha256(data).hexdigest()
        path = d / "blobs" / sha256
        if not path.is_file():
            write_atomic(path, data)
        return {"sha256": sha256, "size": len(data), "oid": _git_blob_sha1(data)}

    def put_lfs_object(self, repo_type: str, repo_id: str, sha256: str, data: bytes) -> None:
        """Store an uploaded LFS object (invisible until a commit references it)."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise HubError(400, f"Uploaded content does not match oid {sha256}")
        path = self.blob_path(repo_type, repo_id, sha256)
        if not path.is_file():
            write_atomic(path, data)

    def lfs_entry(self, repo_type: str, repo_id: str, sha256: str) -> dict[str, Any] | None:
        """The file entry for an uploaded LFS object, or None if it is not stored."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            return None
        path = self.blob_path(repo_type, repo_id, sha256)
        if not path.is_file():
            return None
        size = path.stat().st_size
        return {"sha256": sha256, "size": size, "oid": _git_blob_sha1(_lfs_pointer(sha256, size)), "lfs": True}

    def lfs_patterns(self, repo_type: str, repo_id: str, sha: str) -> list[str]:
        entry = self.commit(repo_type, repo_id, sha).files.get(".gitattributes")
        if entry is None:
            return []
        return _lfs_patterns(self.blob_path(repo_type, repo_id, entry["sha256"]).read_text("utf-8", "replace"))

    def _write_commit(
        self, d: Path, parent: str | None, title: str, description: str, author: str, files: dict[str, dict[str, Any]]
    ) -> str:
        body = {"parent": parent, "title": title, "description": description, "author": author,
                "date": _now_iso(), "files": files}  # fmt: skip
        data = _dump(body)
        sha = hashlib.sha1(data).hexdigest()
        write_atomic(d / "commits" / f"{sha}.json", data)
        return sha

    def _write_refs(self, d: Path, refs: dict[str, dict[str, str]]) -> None:
        """The single point where changes become visible."""
        write_atomic(d / "refs.json", _dump(refs))

    def create_commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        *,
        add: dict[str, bytes] | None = None,
        add_lfs: dict[str, str] | None = None,
        delete: Iterable[str] = (),
        delete_folders: Iterable[str] = (),
        title: str = "",
        description: str = "",
        author: str = "localhub",
        parent_commit: str | None = None,
    ) -> str:
        """Apply deletions then additions on top of `branch`'s head; returns the new commit sha.

        add: path -> content; add_lfs: path -> sha256 of an already uploaded LFS object.
        """
        with self._lock:
            d = self._require(repo_type, repo_id)
            refs = json.loads((d / "refs.json").read_text())
            head = refs["branches"].get(branch)
            if head is None:
                raise HubError(404, f"Invalid rev id: {branch} (not a branch)", "RevisionNotFound")
            if parent_commit is not None and parent_commit != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(self.commit(repo_type, repo_id, head).files)
            for path in delete:
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            for folder in delete_folders:
                prefix = folder.strip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
                for p in gone:
                    del files[p]
            for path, data in (add or {}).items():
                files[_validate_repo_path(path)] = self._put_blob(d, data)
            for path, sha256 in (add_lfs or {}).items():
                entry = self.lfs_entry(repo_type, repo_id, sha256)
                if entry is None:
                    raise HubError(422, f"LFS object {sha256} for {path} was not uploaded")
                files[_validate_repo_path(path)] = entry
            for path in files:  # a path cannot be both a file and a folder
                for parent in PurePosixPath(path).parents:
                    if str(parent) != "." and str(parent) in files:
                        raise HubError(400, f"{parent} is a file, cannot add {path}")
            sha = self._write_commit(d, head, title or "Upload files", description, author, files)
            refs["branches"][branch] = sha
            self._write_refs(d, refs)
            logger.info("%s %s: commit %s on %s (%s)", repo_type, repo_id, sha[:8], branch, title)
            return sha

    def create_ref(self, repo_type: str, repo_id: str, kind: str, name: str, revision: str | None) -> str:
        """Create a branch or tag (`kind` "branches" / "tags") at `revision`; 409 if it exists."""
        with self._lock:
            d = self._require(repo_type, repo_id)
            if not _REF_RE.match(name) or ".." in name or name.endswith(".lock") or _SHA1_RE.match(name):
                raise HubError(400, f"Invalid {kind[:-1] if kind == 'tags' else 'branch'} name: {name!r}")
            sha = self.resolve(repo_type, repo_id, revision)
            refs = json.loads((d / "refs.json").read_text())
            if name in refs["tags"] or name in refs["branches"]:
                ref = f"refs/{'tags' if name in refs['tags'] else 'heads'}/{name}"
                raise HubError(409, f"Reference {ref} already exists")
            refs[kind][name] = sha
            self._write_refs(d, refs)
            return sha

    def delete_ref(self, repo_type: str, repo_id: str, kind: str, name: str) -> None:
        with self._lock:
            d = self._require(repo_type, repo_id)
            refs = json.loads((d / "refs.json").read_text())
            if name not in refs[kind]:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            if kind == "branches" and name == DEFAULT_BRANCH:
                raise HubError(403, f"Cannot delete the default branch {DEFAULT_BRANCH}")
            del refs[kind][name]
            self._write_refs(d, refs)

    # -- reading files -----------------------------------------------------------------------------

    def read_file(self, repo_type: str, repo_id: str, revision: str | None, path: str) -> bytes:
        sha = self.resolve(repo_type, repo_id, revision)
        entry = self.commit(repo_type, repo_id, sha).files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return self.blob_path(repo_type, repo_id, entry["sha256"]).read_bytes()

    def checkout(self, repo_type: str, repo_id: str, revision: str | None, dest: str | Path) -> Path:
        """Write the files of `revision` to the folder `dest` (e.g. to `load_dataset(dest)` without a server)."""
        sha = self.resolve(repo_type, repo_id, revision)
        dest = Path(dest)
        for path, entry in self.commit(repo_type, repo_id, sha).files.items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.blob_path(repo_type, repo_id, entry["sha256"]), target)
        return dest


def _folders(files: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for path in files:
        out.update(str(p) for p in PurePosixPath(path).parents if str(p) != ".")
    return out


def _tree_oid(files: dict[str, dict[str, Any]], folder: str) -> str:
    prefix = folder + "/"
    lines = "".join(f"{p} {e['oid']}\n" for p, e in sorted(files.items()) if p.startswith(prefix))
    return hashlib.sha1(lines.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    message: str
    after: bool


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: tuple[Path, int, int] | None = None  # (path, start, length): streamed instead of body
    stream: Iterator[bytes] | None = None  # written as it comes, then the connection closes (server-sent events)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def _error(err: HubError) -> _Response:
    headers = dict(err.headers)
    headers["X-Error-Message"] = err.message.splitlines()[0][:200] if err.message else ""
    if err.code:
        headers["X-Error-Code"] = err.code
    return _json({"error": err.message}, err.status, headers)


_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_WEB_REPO = r"/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)"  # models have no prefix
_JOBS = r"/api/jobs/(?P<ns>[^/]+)"
_ROUTES: list[tuple[frozenset[str], re.Pattern[str], str]] = [
    (frozenset(m.split()), re.compile(p), h)
    for m, p, h in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE POST", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", _REPO + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", _REPO + r"/auth-check(?P<write>/write)?", "auth_check"),
        ("PUT", _REPO + r"/settings", "settings"),
        ("POST", _REPO + r"/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", _REPO + r"/commit/(?P<rev>[^/]+)", "commit"),
        ("POST DELETE", _REPO + r"/tag/(?P<rev>[^/]+)", "tag"),
        ("POST DELETE", _REPO + r"/branch/(?P<rev>[^/]+)", "branch"),
        ("GET", _REPO + r"/refs", "refs"),
        ("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", _REPO + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", _REPO + r"/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", _WEB_REPO + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT POST", r"/_localhub/lfs/" + _REPO[len("/api/") :] + r"/(?P<oid>[0-9a-f]{64})", "lfs_object"),
        ("GET HEAD", _WEB_REPO + r"/(?:resolve|raw)/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("POST", _JOBS, "create_job"),
        ("GET", _JOBS, "list_jobs"),
        ("GET", _JOBS + r"/(?P<job>[^/]+)", "job_info"),
        ("GET", _JOBS + r"/(?P<job>[^/]+)/logs", "job_logs"),
        ("POST", _JOBS + r"/(?P<job>[^/]+)/cancel", "cancel_job"),
    ]
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], hub: LocalHub):
        self.hub = hub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-response (e.g. a ranged reader closing early) is not an error."""
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)


class LocalHub:
    """The server: `with LocalHub(tmp_path) as hub: HfApi(endpoint=hub.url, token=...)`.

    token: if set, write operations need `Authorization: Bearer <token>` and private repos are hidden from
    anyone else; reads of public repos are open. If None, everything is open (a wrong token is not checked).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        user: str = "localhub",
        orgs: Sequence[str] = (),
        jobs: JobRunner | None = None,
    ):
        self.store = RepoStore(root)
        self.jobs = jobs
        self.root = self.store.root
        self.host, self.port = host, port
        self.token, self.user, self.orgs = token, user, tuple(orgs)
        self.request_log: list[tuple[str, str]] = []
        self._secret = os.urandom(16)  # signs LFS upload URLs, which clients PUT to without credentials
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Bind and serve in a background thread."""
        if self._httpd is not None:
            return self
        self._httpd = _Server((self.host, self.port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="localhub", daemon=True
        )
        self._thread.start()
        logger.info("LocalHub serving %s at %s", self.root, self.url)
        return self

    def close(self) -> None:
        """Stop serving and drop open keep-alive connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with httpd.connections_lock:
            connections = list(httpd.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.jobs is not None:
            self.jobs.close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:54321" (the value for HF_ENDPOINT)."""
        if self._httpd is None:
            raise RuntimeError("LocalHub not started")
        host, port = self._httpd.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- test hooks --------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 500,
        times: int = 1,
        message: str = "Injected failure",
        after: bool = False,
    ) -> None:
        """Answer the next `times` requests matching `method` and `re.search(path_pattern, path)` with `status`.

        after=False: the request is not processed at all. after=True: it is processed (e.g. the commit lands),
        then the answer is replaced by the error, as when a response is lost.
        """
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(path_pattern), status, times, message, after))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            self.request_log.append((method, path))
            for fault in self._faults:
                if fault.remaining > 0 and fault.method in (method, "*") and fault.pattern.search(path):
                    fault.remaining -= 1
                    return fault
        return None

    # -- request handling --------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, query: dict[str, list[str]], headers: Any, body: bytes,
               base_url: str) -> _Response:  # fmt: skip
        fault = self._take_fault(method, raw_path)
        if fault is not None and not fault.after:
            logger.info("injected %d for %s %s", fault.status, method, raw_path)
            return _error(HubError(fault.status, fault.message))
        try:
            response = self._route(method, raw_path, query, headers, body, base_url)
        except HubError as e:
            response = _error(e)
        except Exception:  # a bug here must not kill the connection silently
            logger.exception("LocalHub failed on %s %s", method, raw_path)
            response = _error(HubError(500, "Internal error in LocalHub"))
        if fault is not None:
            logger.info("injected %d (after processing) for %s %s", fault.status, method, raw_path)
            return _error(HubError(fault.status, fault.message))
        return response

    def _route(self, method: str, raw_path: str, query: dict[str, list[str]], headers: Any, body: bytes,
               base_url: str) -> _Response:  # fmt: skip
        for methods, pattern, name in _ROUTES:
            m = pattern.fullmatch(raw_path)
            if m is None or method not in methods:
                continue
            args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
            ctx = _Ctx(self, method, raw_path, args, query, headers, body, base_url)
            return getattr(ctx, f"do_{name}")()
        return _json({"error": "Sorry, we can't find the page you are looking for."}, 404)

    # -- auth --------------------------------------------------------------------------------------

    def sign(self, *parts: str) -> str:
        return hmac.new(self._secret, "\0".join(parts).encode(), hashlib.sha256).hexdigest()

    def _bearer(self, headers: Any) -> str | None:
        value = headers.get("Authorization") or ""
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    def authenticated(self, headers: Any) -> bool:
        """True if the request may write (raises 401 for a wrong token when a token is configured)."""
        if self.token is None:
            return True
        given = self._bearer(headers)
        if given is None:
            return False
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HubError(401, "Invalid credentials in Authorization header")
        return True


class _Ctx:
    """One request: the endpoint handlers (`do_<name>`)."""

    def __init__(self, hub: LocalHub, method: str, path: str, args: dict[str, str], query: dict[str, list[str]],
                 headers: Any, body: bytes, base_url: str):  # fmt: skip
        self.hub, self.store = hub, hub.store
        self.method, self.path, self.args, self.query = method, path, args, query
        self.headers, self.body = headers, body
        self.base_url = base_url

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def repo_type(self) -> str:
        return {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}[self.args.get("type")]

    @property
    def repo_id(self) -> str:
        return f"{self.args['ns']}/{self.args['name']}"

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.q(name) or "").lower() in ("1", "true", "yes")

    def json_body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e
        if not isinstance(data, dict):
            raise HubError(400, "Expected a JSON object")
        return data

    def require_write(self) -> None:
        if not self.hub.authenticated(self.headers):
            raise HubError(401, "You must be authenticated to write to this repo (Authorization: Bearer <token>)")

    def require_read(self) -> None:
        """404 for a missing repo, and for a private one unless authenticated (the Hub does not reveal it)."""
        authed = self.hub.authenticated(self.headers)
        if self.store.meta(self.repo_type, self.repo_id).get("private") and not authed:
            raise HubError(404, f"Repository not found: {self.repo_id}", "RepoNotFound")

    def resolve(self) -> str:
        return self.store.resolve(self.repo_type, self.repo_id, self.args.get("rev"))

    def repo_url(self) -> str:
        return f"{self.base_url}/{URL_PREFIXES[self.repo_type]}{self.repo_id}"

    def page(self, items: list[Any], size: int) -> _Response:
        """One page of `items`, with a GitHub-style `Link: <...>; rel="next"` header when more remain."""
        try:
            start = max(0, int(self.q("cursor") or 0))
            size = min(size, max(1, int(self.q("limit") or size)))
        except ValueError as e:
            raise HubError(400, "Invalid cursor or limit") from e
        headers = {}
        if start + size < len(items):
            params = {k: v[-1] for k, v in self.query.items()}
            params["cursor"] = str(start + size)
            headers["Link"] = f'<{self.base_url}{self.path}?{urlencode(params)}>; rel="next"'
        return _json(items[start : start + size], headers=headers)

    def _last_commits(self, sha: str, paths: Iterable[str]) -> dict[str, dict[str, str]]:
        """For each file or folder path: the newest commit (from `sha`) that changed it."""
        pending = set(paths)
        out: dict[str, dict[str, str]] = {}
        for c in self.store.history(self.repo_type, self.repo_id, sha):
            if not pending:
                break
            before = self.store.commit(self.repo_type, self.repo_id, c.parent).files if c.parent else {}
            changed = {p for p in set(c.files) | set(before) if c.files.get(p) != before.get(p)}
            touched = changed | _folders(changed)
            for path in pending & touched:
                out[path] = {"id": c.sha, "title": c.title, "date": c.date}
            pending -= touched
        return out

    def entries(self, sha: str, paths: list[str], expand: bool) -> list[dict[str, Any]]:
        files = self.store.commit(self.repo_type, self.repo_id, sha).files
        folders = _folders(files)
        out: list[dict[str, Any]] = []
        for path in paths:
            if path in files:
                e = files[path]
                entry: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
                if e.get("lfs"):
                    pointer_size = len(_lfs_pointer(e["sha256"], e["size"]))
                    entry["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": pointer_size}
                out.append(entry)
            elif path in folders:
                out.append({"type": "directory", "oid": _tree_oid(files, path), "size": 0, "path": path})
        if expand:
            last = self._last_commits(sha, [e["path"] for e in out])
            for e in out:
                e["lastCommit"] = last.get(e["path"])
        return out

    # -- endpoints ---------------------------------------------------------------------------------

    def do_whoami(self) -> _Response:
        if self.hub.token is not None and not self.hub.authenticated(self.headers):
            raise HubError(401, "Invalid username or password.")
        hub = self.hub
        return _json({
            "type": "user", "id": hashlib.sha1(hub.user.encode()).hexdigest()[:24], "name": hub.user,
            "fullname": hub.user, "email": None, "emailVerified": False, "canPay": False, "isPro": False,
            "avatarUrl": "", "periodEnd": None,
            "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": "admin",
                      "id": hashlib.sha1(o.encode()).hexdigest()[:24]} for o in hub.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write",
                                                             "createdAt": "1970-01-01T00:00:00.000Z"}},
        })  # fmt: skip

    def do_create_repo(self) -> _Response:
        self.require_write()
        body = self.json_body()
        repo_type = body.get("type") or "model"
        name = body.get("name") or ""
        repo_id = f"{body.get('organization') or self.hub.user}/{name}"
        private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
        try:
            self.store.create_repo(repo_type, repo_id, private=private, author=self.hub.user)
        except HubError as e:
            if e.status == 409:
                url = f"{self.base_url}/{URL_PREFIXES.get(repo_type, '')}{repo_id}"
                return _json({"error": e.message, "url": url}, 409, {"X-Error-Message": e.message})
            raise
        url = f"{self.base_url}/{URL_PREFIXES[repo_type]}{repo_id}"
        return _json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def do_delete_repo(self) -> _Response:
        self.require_write()
        body = self.json_body()
        repo_id = f"{body.get('organization') or self.hub.user}/{body.get('name') or ''}"
        self.store.delete_repo(body.get("type") or "model", repo_id)
        return _json({})

    def do_validate_yaml(self) -> _Response:
        content = self.json_body().get("content") or ""
        try:
            parse_front_matter(content)
        except ValueError as e:
            return _json({"error": "Invalid YAML metadata", "errors": [{"message": str(e)}]}, 400)
        return _json({"errors": [], "warnings": []})

    def do_repo_info(self) -> _Response:
        self.require_read()
        sha = self.resolve()
        commit = self.store.commit(self.repo_type, self.repo_id, sha)
        meta = self.store.meta(self.repo_type, self.repo_id)
        blobs = self.flag("blobs")
        siblings = []
        for path, e in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=e["size"], blobId=e["oid"])
                if e.get("lfs"):
                    pointer_size = len(_lfs_pointer(e["sha256"], e["size"]))
                    sibling["lfs"] = {"sha256": e["sha256"], "size": e["size"], "pointerSize": pointer_size}
            siblings.append(sibling)
        card: dict[str, Any] | None = None
        if "README.md" in commit.files:
            try:
                card = parse_front_matter(
                    self.store.read_file(self.repo_type, self.repo_id, sha, "README.md").decode("utf-8", "replace")
                )
            except ValueError:
                card = None
        tags = [str(t) for t in (card or {}).get("tags") or [] if isinstance(t, (str, int, float))]
        for key in ("license", "language"):
            values = (card or {}).get(key)
            for v in values if isinstance(values, list) else [values] if values else []:
                tags.append(f"{key}:{v}")
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{self.repo_type}/{self.repo_id}".encode()).hexdigest()[:24],
            "id": self.repo_id, "author": self.args["ns"], "sha": sha, "lastModified": commit.date,
            "createdAt": meta.get("created_at"), "private": bool(meta.get("private")), "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": tags, "siblings": siblings,
            "usedStorage": sum(e["size"] for e in commit.files.values()),
        }  # fmt: skip
        if card is not None:
            info["cardData"] = card
        if self.repo_type == "model":
            info["modelId"] = self.repo_id
        if self.repo_type == "space":
            info["sdk"] = (card or {}).get("sdk")
        return _json(info)

    def do_auth_check(self) -> _Response:
        if self.args.get("write"):
            self.require_write()
        self.require_read()
        return _json({})

    def do_settings(self) -> _Response:
        self.require_write()
        body = self.json_body()
        if "visibility" in body or "private" in body:
            private = body["visibility"] == "private" if "visibility" in body else bool(body["private"])
            self.store.update_meta(self.repo_type, self.repo_id, private=private)
        return _json({})

    def do_preupload(self) -> _Response:
        """LFS for .gitattributes LFS patterns and big files, regular otherwise; oid of the current file if any."""
        self.require_write()
        self.require_read()
        sha = self.resolve()
        current = self.store.commit(self.repo_type, self.repo_id, sha).files
        patterns = self.store.lfs_patterns(self.repo_type, self.repo_id, sha)
        files = []
        for f in self.json_body().get("files") or []:
            path, size = str(f.get("path")), int(f.get("size") or 0)
            lfs = size > LFS_SIZE_THRESHOLD or _matches_lfs(path, patterns)
            existing = current.get(path)
            oid = None if existing is None else existing["sha256"] if existing.get("lfs") else existing["oid"]
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return _json({"files": files, "commitOid": sha})

    def do_lfs_batch(self) -> _Response:
        """git-lfs batch API (upload only): one signed PUT URL per object not already stored, plus verify."""
        self.require_write()
        self.require_read()
        body = self.json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "LocalHub's LFS batch API only supports uploads (downloads go through /resolve)")
        objects = []
        for obj in body.get("objects") or []:
            oid, size = str(obj.get("oid")), int(obj.get("size") or 0)
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                item["error"] = {"code": 422, "message": f"Invalid oid {oid!r}"}
            elif self.store.lfs_entry(self.repo_type, self.repo_id, oid) is None:
                href = f"{self.base_url}/_localhub/lfs/{self.repo_type}s/{self.repo_id}/{oid}"
                sig = self.hub.sign(self.repo_type, self.repo_id, oid)
                item["actions"] = {"upload": {"href": f"{href}?sig={sig}"}, "verify": {"href": href}}
            objects.append(item)
        lfs_json = {"Content-Type": "application/vnd.git-lfs+json"}
        return _json({"transfer": "basic", "objects": objects}, headers=lfs_json)

    def do_lfs_object(self) -> _Response:
        """PUT: the upload itself (authorized by the URL signature). POST: verify (needs write access)."""
        oid = self.args["oid"]
        if self.method == "PUT":
            expected = self.hub.sign(self.repo_type, self.repo_id, oid)
            if not hmac.compare_digest(self.q("sig") or "", expected):
                raise HubError(403, "Invalid or missing upload signature")
            self.store.put_lfs_object(self.repo_type, self.repo_id, oid, self.body)
            return _Response(200, b"", {"ETag": f'"{oid}"'})
        self.require_write()
        entry = self.store.lfs_entry(self.repo_type, self.repo_id, oid)
        if entry is None or entry["size"] != int(self.json_body().get("size", entry["size"])):
            raise HubError(404, f"LFS object {oid} not found", "EntryNotFound")
        return _json({})

    def do_commit(self) -> _Response:
        self.require_write()
        self.require_read()
        if self.flag("create_pr"):
            raise HubError(400, "Pull requests are not supported by LocalHub")
        header: dict[str, Any] = {}
        add: dict[str, bytes] = {}
        add_lfs: dict[str, str] = {}
        delete: list[str] = []
        delete_folders: list[str] = []
        for line in self.body.splitlines():  # NDJSON: header, then one operation per line
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    content = value.get("content", "")
                    raw = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                    add[value["path"]] = raw
                elif key == "lfsFile":
                    add_lfs[value["path"]] = str(value["oid"])
                elif key == "deletedFile":
                    delete.append(value["path"])
                elif key == "deletedFolder":
                    delete_folders.append(value["path"])
                else:
                    raise HubError(400, f"Unsupported commit operation: {key}")
            except (ValueError, KeyError, TypeError, AttributeError) as e:  # binascii.Error is a ValueError
                raise HubError(400, f"Invalid commit payload line: {e!r}") from e
        sha = self.store.create_commit(
            self.repo_type, self.repo_id, self.args["rev"], add=add, add_lfs=add_lfs, delete=delete,
            delete_folders=delete_folders, title=str(header.get("summary") or ""),
            description=str(header.get("description") or ""), author=self.hub.user,
            parent_commit=header.get("parentCommit"),
        )  # fmt: skip
        return _json({"success": True, "commitOid": sha, "commitUrl": f"{self.repo_url()}/commit/{sha}",
                      "pullRequestUrl": None, "hookOutput": None})  # fmt: skip

    def _ref(self, kind: str) -> _Response:
        self.require_write()
        self.require_read()
        if self.method == "DELETE":
            self.store.delete_ref(self.repo_type, self.repo_id, kind, self.args["rev"])
            return _json({})
        body = self.json_body()
        if kind == "tags":
            name, revision = str(body.get("tag") or ""), self.args["rev"]
        else:
            name, revision = self.args["rev"], body.get("startingPoint")
        sha = self.store.create_ref(self.repo_type, self.repo_id, kind, name, revision)
        ref = f"refs/{'tags' if kind == 'tags' else 'heads'}/{name}"
        return _json({"name": name, "ref": ref, "targetCommit": sha})

    def do_tag(self) -> _Response:
        return self._ref("tags")

    def do_branch(self) -> _Response:
        return self._ref("branches")

    def do_refs(self) -> _Response:
        self.require_read()
        refs = self.store.refs(self.repo_type, self.repo_id)

        def fmt(kind: str, prefix: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": s} for n, s in sorted(refs[kind].items())]

        out: dict[str, Any] = {"branches": fmt("branches", "heads"), "converts": [], "tags": fmt("tags", "tags")}
        if self.flag("include_prs"):
            out["pullRequests"] = []
        return _json(out)

    def do_tree(self) -> _Response:
        self.require_read()
        sha = self.resolve()
        files = self.store.commit(self.repo_type, self.repo_id, sha).files
        folder = (self.args.get("path") or "").strip("/")
        if folder and folder not in _folders(files):
            rev = self.args.get("rev")
            raise HubError(404, f"{folder} does not exist on {rev!r} (or is a file)", "EntryNotFound")
        prefix = folder + "/" if folder else ""
        folders = _folders(files)
        below = [p for p in [*files, *folders] if p.startswith(prefix)]
        if not self.flag("recursive"):
            below = [p for p in below if "/" not in p[len(prefix) :]]
        below.sort(key=lambda p: (p not in folders, p))  # folders first, as the Hub lists them
        expand = self.flag("expand")
        # Page over paths first (cheap), then build (possibly expanded) entries for the page only.
        response = self.page(below, _TREE_PAGE_EXPANDED if expand else _TREE_PAGE)
        response.body = json.dumps(self.entries(sha, json.loads(response.body), expand)).encode()
        return response

    def do_paths_info(self) -> _Response:
        self.require_read()
        sha = self.resolve()
        ctype = self.headers.get("Content-Type") or ""
        if "json" in ctype:
            body = self.json_body()
            paths, expand = body.get("paths") or [], bool(body.get("expand"))
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[-1].lower() in ("1", "true")
        paths = [p.strip("/") for p in ([paths] if isinstance(paths, str) else paths)]
        return _json(self.entries(sha, list(dict.fromkeys(paths)), expand))

    def do_commits(self) -> _Response:
        self.require_read()
        formatted = "formatted" in (self.query.get("expand[]") or [])
        items = []
        for c in self.store.history(self.repo_type, self.repo_id, self.resolve()):
            item: dict[str, Any] = {
                "id": c.sha, "title": c.title, "message": c.description, "date": c.date,
                "authors": [{"user": c.author, "avatar": None}],
            }  # fmt: skip
            if formatted:
                item["formatted"] = {"title": c.title, "message": c.description}
            items.append(item)
        return self.page(items, _COMMITS_PAGE)

    def do_resolve(self) -> _Response:
        self.require_read()
        sha = self.resolve()
        path = self.args["path"]
        entry = self.store.commit(self.repo_type, self.repo_id, sha).files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        blob = self.store.blob_path(self.repo_type, self.repo_id, entry["sha256"])
        size = entry["size"]
        etag = entry["sha256"] if entry.get("lfs") else entry["oid"]  # what file_download caches the blob under
        headers = {
            "ETag": f'"{etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(PurePosixPath(path).name)}",
        }  # fmt: skip
        start, length, status = 0, size, 200
        range_header = self.headers.get("Range")
        if range_header:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            if m is None or m.groups() == ("", ""):
                raise HubError(416, f"Invalid range: {range_header}", headers={"Content-Range": f"bytes */{size}"})
            first, last = m.groups()
            if first:
                start, end = int(first), min(int(last) if last else size - 1, size - 1)
            else:
                start, end = max(0, size - int(last)), size - 1
            if start >= size or end < start:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            length, status = end - start + 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return _Response(status, b"", headers, file=(blob, start, length))

    # -- jobs (see builder.localjobs) --------------------------------------------------------------

    def _jobs(self) -> JobRunner:
        if self.hub.jobs is None:
            raise HubError(404, "Jobs are not enabled on this server (start it with --run-jobs)")
        self.require_write()  # jobs run code: never without credentials
        return self.hub.jobs

    def _job_call(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except JobError as err:
            raise HubError(err.status, err.message) from None

    def do_create_job(self) -> _Response:
        jobs = self._jobs()
        ns = self.args["ns"]
        owner = {"id": hashlib.sha1(ns.encode()).hexdigest()[:24], "name": ns, "type": "user" if ns == self.hub.user else "org"}
        job = self._job_call(jobs.submit, ns, self.json_body(), owner, self.base_url)
        return _json(job.info())

    def do_list_jobs(self) -> _Response:
        return _json([job.info() for job in self._jobs().list(self.args["ns"])])

    def do_job_info(self) -> _Response:
        return _json(self._job_call(self._jobs().get, self.args["ns"], self.args["job"]).info())

    def do_job_logs(self) -> _Response:
        jobs = self._jobs()
        job = self._job_call(jobs.get, self.args["ns"], self.args["job"])
        # Live, as on the Hub: the stream ends when the job does (a client that wants only the past stops reading).
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        return _Response(200, headers=headers, stream=jobs.events(job, follow=True))

    def do_cancel_job(self) -> _Response:
        jobs = self._jobs()
        return _json(self._job_call(jobs.cancel, self.args["ns"], self.args["job"]).info())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms delayed-ACK stalls
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        logger.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        body = self._read_body()
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        hub = self.server.hub
        query = parse_qs(split.query, keep_blank_values=True)
        response = hub.handle(method, split.path, query, self.headers, body, f"http://{host}")
        if response.status >= 400:
            logger.debug("%s %s -> %d %s", method, self.path, response.status, response.body[:200])
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if response.stream is not None:
            self.send_header("Connection", "close")  # no length: the body ends when the connection does
            self.end_headers()
            self.close_connection = True
            for chunk in response.stream:
                self.wfile.write(chunk)
                self.wfile.flush()
            return
        length = response.file[2] if response.file else len(response.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if method == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        path, start, remaining = response.file
        with open(path, "rb") as f:
            f.seek(start)
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m builder.localhub --root DIR [--host H] [--port P] [--token T]`: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m builder.localhub", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding the repos (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--token", default=os.environ.get("LOCALHUB_TOKEN"),
                        help="require this bearer token for writes (default: $LOCALHUB_TOKEN, else open)")  # fmt: skip
    parser.add_argument("--user", default="localhub", help="user name reported by whoami and used as author")
    parser.add_argument("--run-jobs", action="store_true",
                        help="serve the HF Jobs API, running each job's command here as a local process (trusted clients only)")  # fmt: skip
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    jobs = JobRunner() if args.run_jobs else None
    hub = LocalHub(args.root, host=args.host, port=args.port, token=args.token, user=args.user, jobs=jobs).start()
    hint = f"HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1 HF_UPDATE_DOWNLOAD_COUNTS=0"
    logger.info("Point Hugging Face clients at it (set before they are imported): export %s", hint)
    example = "import datasets; print(datasets.load_dataset('org/name', revision='v1'))"
    logger.info('e.g. %s python -c "%s"', hint, example)
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, or `kill`; even if the parent shell ignored SIGINT
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        while not stop.wait(0.2):
            pass
        logger.info("stopping")
    finally:
        hub.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def load_version(root: str | Path, repo_id: str, revision: str = "main", split: str = "train"):
    """One version of a dataset repo in a local repository folder, as a `datasets.Dataset` (no server needed):

        python -c 'from builder.localhub import load_version; print(load_version("outputs/hub", "local/nanoflux-medical", "v1"))'
    """
    from datasets import load_dataset

    dest = Path(tempfile.mkdtemp(prefix="nanoflux-checkout-"))
    RepoStore(root).checkout("dataset", repo_id, revision, dest)
    return load_dataset(str(dest), split=split)
