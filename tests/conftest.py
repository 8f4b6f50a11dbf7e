"""Test isolation: offline, a private HF_HOME per session, no analytics."""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.tgi_server import allow_loopback_offline  # noqa: F401 (a fixture, shared by every test module)

os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    GRADIO_ANALYTICS_ENABLED="False",
    HF_HUB_DISABLE_TELEMETRY="1",
    TOKENIZERS_PARALLELISM="false",
)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="nanoflux-hf-home-")
# The converted embedded model is cached per test session: converted once, shared by every slow test.
os.environ["NANOFLUX_CACHE"] = tempfile.mkdtemp(prefix="nanoflux-cache-")
os.environ.pop("HF_TOKEN", None)


@pytest.fixture(autouse=True)
def _no_token_leaks_between_tests(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The packaged SmolLM2 converted to a plain HF folder (in this session's NANOFLUX_CACHE)."""
    from nanoflux.models import embedded_model_path

    return embedded_model_path()


@pytest.fixture
def hub_endpoint(monkeypatch, tmp_path):
    """Call with a loopback Hub server's URL to point HfApi and load_dataset at it (restored after the test)."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    from tests.hub_clients import point_clients_at

    previous_factory = _http._GLOBAL_CLIENT_FACTORY
    yield lambda url: point_clients_at(monkeypatch, url, tmp_path / "hf-home")
    set_client_factory(previous_factory)
