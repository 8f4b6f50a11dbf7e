"""The Hub stand-in's storage: repos as plain folders of content-addressed blobs, commits and refs (stdlib only).

    root/{datasets,models,spaces}/<namespace>/<name>/
        meta.json               {"private": bool, "created_at": iso}
        refs.json               {"branches": {"main": sha}, "tags": {"v1": sha}}
        commits/<sha>.json      {"parent", "title", "description", "author", "date", "files": {path: entry}}
        blobs/<sha256>          file contents, content-addressed
    where a file entry is {"sha256", "size", "oid"} (+ "lfs": true); oid is the git blob sha1 of the content, or of
    the LFS pointer for LFS files, as the Hub reports it.

A commit id is the sha1 of its canonical JSON. Every file is written atomically (temp file + os.replace) and a commit
becomes visible only when `refs.json` is replaced, so a crash mid-commit leaves no visible change.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from nanoflux.errors import NanoFluxError
from nanoflux.runfolder import write_atomic

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
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses regular files above this size


class HubError(NanoFluxError):
    """An error answered in the Hub's shape: `{"error": message}`, status, and `X-Error-Code` when relevant."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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
        body = {
            "parent": parent,
            "title": title,
            "description": description,
            "author": author,
            "date": _now_iso(),
            "files": files,
        }
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


def load_version(root: str | Path, repo_id: str, revision: str = "main", split: str = "train"):
    """One version of a dataset repo in a local repository folder, as a `datasets.Dataset` (no server needed):

    python -c 'from localhub import load_version; print(load_version("outputs/hub", "local/nanoflux-medical", "v1"))'
    """
    from datasets import load_dataset

    dest = Path(tempfile.mkdtemp(prefix="nanoflux-checkout-"))
    RepoStore(root).checkout("dataset", repo_id, revision, dest)
    return load_dataset(str(dest), split=split)
