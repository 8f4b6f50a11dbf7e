"""The Hub stand-in's server: `LocalHub` serves a `RepoStore` over HTTP on loopback; `python -m localhub` runs it.

with LocalHub(tmp_path) as hub:
    HfApi(endpoint=hub.url, token=...)      # or HF_ENDPOINT=hub.url for datasets / huggingface_hub
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import re
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from localhub.api import _Ctx
from localhub.jobs import JobRunner
from localhub.routes import ROUTES, Response, error_response, json_response
from localhub.serving import LoopbackHTTPServer, ServerThread
from localhub.store import HubError, RepoStore

logger = logging.getLogger(__name__)


@dataclass
class HubFault:
    """An error to answer a request with (fault injection, see `localhub.testing.FaultyHub`): the next `remaining`
    requests matching `method` and `pattern` get `status` and `message`, before processing or, `after`, instead of
    the answer of a request that was processed (as when a response is lost)."""

    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    message: str
    after: bool


DEFAULT_PORT = 7861  # not the Space's 7860: both can run at once


class _Server(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], hub: LocalHub):
        self.hub = hub
        super().__init__(address, _Handler)

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
        self._lock = threading.Lock()
        self._serving: ServerThread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Bind and serve in a background thread."""
        if self._serving is not None:
            return self
        self._serving = ServerThread(_Server((self.host, self.port), self), name="localhub")
        logger.info("LocalHub serving %s at %s", self.root, self.url)
        return self

    def close(self) -> None:
        """Stop serving and drop open keep-alive connections."""
        serving, self._serving = self._serving, None
        if serving is None:
            return
        serving.stop()
        if self.jobs is not None:
            self.jobs.close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:54321" (the value for HF_ENDPOINT)."""
        if self._serving is None:
            raise RuntimeError("LocalHub not started")
        return self._serving.url

    # -- hooks -------------------------------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> HubFault | None:
        """Records the request; a fault to answer it with instead (none here: see `localhub.testing.FaultyHub`)."""
        with self._lock:
            self.request_log.append((method, path))
        return None

    # -- request handling --------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, query: dict[str, list[str]], headers: Any, body: bytes, base_url: str
    ) -> Response:
        fault = self._take_fault(method, raw_path)
        if fault is not None and not fault.after:
            logger.info("injected %d for %s %s", fault.status, method, raw_path)
            return error_response(HubError(fault.status, fault.message))
        try:
            response = self._route(method, raw_path, query, headers, body, base_url)
        except HubError as e:
            response = error_response(e)
        except Exception:  # a bug here must not kill the connection silently
            logger.exception("LocalHub failed on %s %s", method, raw_path)
            response = error_response(HubError(500, "Internal error in LocalHub"))
        if fault is not None:
            logger.info("injected %d (after processing) for %s %s", fault.status, method, raw_path)
            return error_response(HubError(fault.status, fault.message))
        return response

    def _route(
        self, method: str, raw_path: str, query: dict[str, list[str]], headers: Any, body: bytes, base_url: str
    ) -> Response:
        for methods, pattern, name in ROUTES:
            m = pattern.fullmatch(raw_path)
            if m is None or method not in methods:
                continue
            args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
            ctx = _Ctx(self, method, raw_path, args, query, headers, body, base_url)
            return getattr(ctx, f"do_{name}")()
        return json_response({"error": "Sorry, we can't find the page you are looking for."}, 404)

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
    """`python -m localhub --root DIR [--host H] [--port P] [--token T]`: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m localhub", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding the repos (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--token",
        default=os.environ.get("LOCALHUB_TOKEN"),
        help="require this bearer token for writes (default: $LOCALHUB_TOKEN, else open)",
    )
    parser.add_argument("--user", default="localhub", help="user name reported by whoami and used as author")
    parser.add_argument(
        "--run-jobs",
        action="store_true",
        help="serve the HF Jobs API, running each job's command here as a local process (trusted clients only)",
    )
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
