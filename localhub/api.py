"""The Hub's HTTP API over a `RepoStore`: one handler (`_Ctx.do_<name>`) per endpoint the Hub clients call (which
handler answers which path: `localhub.routes`).

Endpoints (what huggingface_hub 2.4 and datasets 5.2 call): whoami-v2, repos/create, repos/delete, validate-yaml,
repo info (+ /revision/{rev}), preupload, commit, tag, branch, refs, tree (paginated), paths-info, commits,
settings, auth-check, LFS batch + upload + verify, GET/HEAD resolve (Range supported), and with a `JobRunner` the
HF Jobs API (run, inspect, list, logs, cancel; see `localhub.jobs`). Anything else is a plain 404, which is what
clients expect for optional services (parquet export, croissant, dataset viewer). Pull requests, Xet and
super-squash are not implemented.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode

from localhub.jobs import JobError, JobRunner
from localhub.routes import Response, json_response
from localhub.store import (
    LFS_SIZE_THRESHOLD,
    URL_PREFIXES,
    HubError,
    _folders,
    _lfs_pointer,
    _matches_lfs,
    _tree_oid,
    parse_front_matter,
)

if TYPE_CHECKING:
    from localhub.server import LocalHub

_TREE_PAGE, _TREE_PAGE_EXPANDED, _COMMITS_PAGE = 1000, 50, 50  # page sizes the Hub uses

logger = logging.getLogger(__name__)


class _Ctx:
    """One request: the endpoint handlers (`do_<name>`)."""

    def __init__(
        self,
        hub: LocalHub,
        method: str,
        path: str,
        args: dict[str, str],
        query: dict[str, list[str]],
        headers: Any,
        body: bytes,
        base_url: str,
    ):
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

    def page(self, items: list[Any], size: int) -> Response:
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
        return json_response(items[start : start + size], headers=headers)

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

    def do_whoami(self) -> Response:
        if self.hub.token is not None and not self.hub.authenticated(self.headers):
            raise HubError(401, "Invalid username or password.")
        hub = self.hub
        return json_response(
            {
                "type": "user",
                "id": hashlib.sha1(hub.user.encode()).hexdigest()[:24],
                "name": hub.user,
                "fullname": hub.user,
                "email": None,
                "emailVerified": False,
                "canPay": False,
                "isPro": False,
                "avatarUrl": "",
                "periodEnd": None,
                "orgs": [
                    {
                        "type": "org",
                        "name": o,
                        "fullname": o,
                        "roleInOrg": "admin",
                        "id": hashlib.sha1(o.encode()).hexdigest()[:24],
                    }
                    for o in hub.orgs
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {
                        "displayName": "localhub",
                        "role": "write",
                        "createdAt": "1970-01-01T00:00:00.000Z",
                    },
                },
            }
        )

    def do_create_repo(self) -> Response:
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
                return json_response({"error": e.message, "url": url}, 409, {"X-Error-Message": e.message})
            raise
        url = f"{self.base_url}/{URL_PREFIXES[repo_type]}{repo_id}"
        return json_response({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def do_delete_repo(self) -> Response:
        self.require_write()
        body = self.json_body()
        repo_id = f"{body.get('organization') or self.hub.user}/{body.get('name') or ''}"
        self.store.delete_repo(body.get("type") or "model", repo_id)
        return json_response({})

    def do_validate_yaml(self) -> Response:
        content = self.json_body().get("content") or ""
        try:
            parse_front_matter(content)
        except ValueError as e:
            return json_response({"error": "Invalid YAML metadata", "errors": [{"message": str(e)}]}, 400)
        return json_response({"errors": [], "warnings": []})

    def do_repo_info(self) -> Response:
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
            "id": self.repo_id,
            "author": self.args["ns"],
            "sha": sha,
            "lastModified": commit.date,
            "createdAt": meta.get("created_at"),
            "private": bool(meta.get("private")),
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "usedStorage": sum(e["size"] for e in commit.files.values()),
        }
        if card is not None:
            info["cardData"] = card
        if self.repo_type == "model":
            info["modelId"] = self.repo_id
        if self.repo_type == "space":
            info["sdk"] = (card or {}).get("sdk")
        return json_response(info)

    def do_auth_check(self) -> Response:
        if self.args.get("write"):
            self.require_write()
        self.require_read()
        return json_response({})

    def do_settings(self) -> Response:
        self.require_write()
        body = self.json_body()
        if "visibility" in body or "private" in body:
            private = body["visibility"] == "private" if "visibility" in body else bool(body["private"])
            self.store.update_meta(self.repo_type, self.repo_id, private=private)
        return json_response({})

    def do_preupload(self) -> Response:
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
        return json_response({"files": files, "commitOid": sha})

    def do_lfs_batch(self) -> Response:
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
        return json_response({"transfer": "basic", "objects": objects}, headers=lfs_json)

    def do_lfs_object(self) -> Response:
        """PUT: the upload itself (authorized by the URL signature). POST: verify (needs write access)."""
        oid = self.args["oid"]
        if self.method == "PUT":
            expected = self.hub.sign(self.repo_type, self.repo_id, oid)
            if not hmac.compare_digest(self.q("sig") or "", expected):
                raise HubError(403, "Invalid or missing upload signature")
            self.store.put_lfs_object(self.repo_type, self.repo_id, oid, self.body)
            return Response(200, b"", {"ETag": f'"{oid}"'})
        self.require_write()
        entry = self.store.lfs_entry(self.repo_type, self.repo_id, oid)
        if entry is None or entry["size"] != int(self.json_body().get("size", entry["size"])):
            raise HubError(404, f"LFS object {oid} not found", "EntryNotFound")
        return json_response({})

    def do_commit(self) -> Response:
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
            self.repo_type,
            self.repo_id,
            self.args["rev"],
            add=add,
            add_lfs=add_lfs,
            delete=delete,
            delete_folders=delete_folders,
            title=str(header.get("summary") or ""),
            description=str(header.get("description") or ""),
            author=self.hub.user,
            parent_commit=header.get("parentCommit"),
        )
        return json_response(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.repo_url()}/commit/{sha}",
                "pullRequestUrl": None,
                "hookOutput": None,
            }
        )

    def _ref(self, kind: str) -> Response:
        self.require_write()
        self.require_read()
        if self.method == "DELETE":
            self.store.delete_ref(self.repo_type, self.repo_id, kind, self.args["rev"])
            return json_response({})
        body = self.json_body()
        if kind == "tags":
            name, revision = str(body.get("tag") or ""), self.args["rev"]
        else:
            name, revision = self.args["rev"], body.get("startingPoint")
        sha = self.store.create_ref(self.repo_type, self.repo_id, kind, name, revision)
        ref = f"refs/{'tags' if kind == 'tags' else 'heads'}/{name}"
        return json_response({"name": name, "ref": ref, "targetCommit": sha})

    def do_tag(self) -> Response:
        return self._ref("tags")

    def do_branch(self) -> Response:
        return self._ref("branches")

    def do_refs(self) -> Response:
        self.require_read()
        refs = self.store.refs(self.repo_type, self.repo_id)

        def fmt(kind: str, prefix: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": s} for n, s in sorted(refs[kind].items())]

        out: dict[str, Any] = {"branches": fmt("branches", "heads"), "converts": [], "tags": fmt("tags", "tags")}
        if self.flag("include_prs"):
            out["pullRequests"] = []
        return json_response(out)

    def do_tree(self) -> Response:
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

    def do_paths_info(self) -> Response:
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
        return json_response(self.entries(sha, list(dict.fromkeys(paths)), expand))

    def do_commits(self) -> Response:
        self.require_read()
        formatted = "formatted" in (self.query.get("expand[]") or [])
        items = []
        for c in self.store.history(self.repo_type, self.repo_id, self.resolve()):
            item: dict[str, Any] = {
                "id": c.sha,
                "title": c.title,
                "message": c.description,
                "date": c.date,
                "authors": [{"user": c.author, "avatar": None}],
            }
            if formatted:
                item["formatted"] = {"title": c.title, "message": c.description}
            items.append(item)
        return self.page(items, _COMMITS_PAGE)

    def do_resolve(self) -> Response:
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
            "ETag": f'"{etag}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(PurePosixPath(path).name)}",
        }
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
        return Response(status, b"", headers, file=(blob, start, length))

    # -- jobs (see localhub.jobs) -------------------------------------------------------------------

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

    def do_create_job(self) -> Response:
        jobs = self._jobs()
        ns = self.args["ns"]
        owner = {
            "id": hashlib.sha1(ns.encode()).hexdigest()[:24],
            "name": ns,
            "type": "user" if ns == self.hub.user else "org",
        }
        job = self._job_call(jobs.submit, ns, self.json_body(), owner, self.base_url)
        return json_response(job.info())

    def do_list_jobs(self) -> Response:
        return json_response([job.info() for job in self._jobs().list(self.args["ns"])])

    def do_job_info(self) -> Response:
        return json_response(self._job_call(self._jobs().get, self.args["ns"], self.args["job"]).info())

    def do_job_logs(self) -> Response:
        jobs = self._jobs()
        job = self._job_call(jobs.get, self.args["ns"], self.args["job"])
        # Live, as on the Hub: the stream ends when the job does (a client that wants only the past stops reading).
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        return Response(200, headers=headers, stream=jobs.events(job, follow=True))

    def do_cancel_job(self) -> Response:
        jobs = self._jobs()
        return json_response(self._job_call(jobs.cancel, self.args["ns"], self.args["job"]).info())
