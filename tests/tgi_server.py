"""Pytest fixtures over the scripted TGI-compatible server (`localhub.testing.tgi`, importable without pytest, which
the benchmarks use too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localhub.testing.tgi import (  # noqa: F401
    LOOPBACK_HOSTS,
    SERVER_KINDS,
    Fault,
    RecordedRequest,
    Reply,
    ScriptedTGI,
    echo_responder,
    loopback_reachable,
)


@pytest.fixture
def allow_loopback_offline() -> Iterator[None]:
    """Let huggingface_hub reach loopback servers while HF_HUB_OFFLINE=1 (set by tests/conftest.py)."""
    with loopback_reachable():
        yield


@pytest.fixture
def tgi_server(allow_loopback_offline: None) -> Iterator[ScriptedTGI]:
    """A fresh scripted server per test (echo responder, no faults, no latency), reachable while offline."""
    with ScriptedTGI() as server:
        yield server
