"""The Hub's URL table and response envelope: which `_Ctx.do_<name>` handler of `localhub.api` answers each method and
path the Hub clients call (`ROUTES`), and the `Response` a handler returns (`json_response`, `error_response`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localhub.store import HubError


@dataclass
class Response:
    """What a handler answers: a status, headers and a body (bytes, a file range, or a stream)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: tuple[Path, int, int] | None = None  # (path, start, length): streamed instead of body
    stream: Iterator[bytes] | None = None  # written as it comes, then the connection closes (server-sent events)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def error_response(err: HubError) -> Response:
    headers = dict(err.headers)
    headers["X-Error-Message"] = err.message.splitlines()[0][:200] if err.message else ""
    if err.code:
        headers["X-Error-Code"] = err.code
    return json_response({"error": err.message}, err.status, headers)


_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_WEB_REPO = r"/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)"  # models have no prefix
_JOBS = r"/api/jobs/(?P<ns>[^/]+)"
ROUTES: list[tuple[frozenset[str], re.Pattern[str], str]] = [
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
