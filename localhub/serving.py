"""Loopback server lifecycle, shared by every server NanoFlux starts for itself, its tests and its benchmarks
(stdlib only): a free port, an HTTP server serving in a background thread that stops with its keep-alive
connections, waiting until a server answers, and stopping a child-process server.

    with ServerThread(LoopbackHTTPServer(("127.0.0.1", 0), Handler), name="mine") as serving:
        serving.url     # "http://127.0.0.1:54321"

`LocalHub` and `ScriptedTGI` serve through a `ServerThread`; the embedded llama.cpp engine and the benchmarks'
child servers use `free_port`, `wait_until_answers` and `stop_process`.
"""

from __future__ import annotations

import http.client
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

# Host names as a client should call them, for a server bound to every interface.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may take it before the caller binds it: retry then)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def base_url(host: str, port: int) -> str:
    """`http://host:port` for a bound address (a wildcard host becomes loopback, an IPv6 one is bracketed)."""
    host = _WILDCARDS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its open connections, so that stopping it also ends the handler threads
    waiting for a client's next keep-alive request (`close_connections`)."""

    daemon_threads = True
    block_on_close = False  # keep-alive handler threads end when their socket is shut (close_connections)
    # The listen backlog: the default of 5 refuses connections when dozens of clients connect at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open connection (a handler blocked reading the next request then returns)."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ServerThread:
    """`server` serving in a daemon thread from construction until `stop()` (or the end of a `with` block)."""

    def __init__(self, server: LoopbackHTTPServer, *, name: str = "loopback-server"):
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:54321"."""
        host, port = self.server.server_address[:2]
        return base_url(host, port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end open keep-alive connections, close the socket and join the thread."""
        self.server.shutdown()
        self.server.close_connections()
        self.server.server_close()
        self.thread.join(timeout=timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def answers(url: str, path: str = "/health", timeout: float = 2.0) -> bool:
    """Whether `GET url+path` gets a 200 now (straight to the address: no proxy applies to loopback)."""
    host_port = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_until_answers(
    url: str,
    path: str,
    timeout: float,
    *,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.2,
    probe_timeout: float = 2.0,
) -> bool:
    """Poll `GET url+path` until it answers 200 (True), `alive()` turns false or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while alive():
        if answers(url, path, probe_timeout):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return False


def stop_process(process: subprocess.Popen, timeout: float = 10.0, *, terminate: bool = True) -> int:
    """End a child server and return its exit code: SIGTERM (unless `terminate` is false: it was asked to exit some
    other way, e.g. its stdin closed), then SIGKILL if it has not exited after `timeout` seconds."""
    if process.poll() is None:
        if terminate:
            process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
