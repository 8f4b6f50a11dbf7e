"""Point the real huggingface_hub and datasets clients at a loopback Hub server while HF_HUB_OFFLINE=1 holds for
every other host (used by the `hub` fixtures)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from huggingface_hub.errors import OfflineModeIsEnabled

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _refuse_non_loopback(request: httpx2.Request) -> None:
    if request.url.host not in LOOPBACK_HOSTS:
        raise OfflineModeIsEnabled(f"Cannot reach {request.url}: only loopback is allowed in tests.")


def point_clients_at(monkeypatch: pytest.MonkeyPatch, url: str, cache_root: Path) -> None:
    """What the real clients need to talk to `url` inside a test session that runs with HF_HUB_OFFLINE=1.

    huggingface_hub reads ENDPOINT / the resolve-URL template / HF_HUB_OFFLINE / HF_HUB_CACHE from its `constants`
    module at call time; datasets keeps its own copies in `datasets.config` (endpoint, resolve URL, offline flag,
    cache) and would otherwise ping S3 to count downloads. The shared httpx2 client is rebuilt with a hook that
    refuses every non-loopback host (see the `hub` fixture, which restores the default client afterwards).
    """
    import datasets.config
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(cache_root))
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache_root / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # LocalHub speaks LFS, not Xet
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", url)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache_root / "datasets")
    set_client_factory(
        lambda: httpx2.Client(
            event_hooks={"request": [_refuse_non_loopback, _http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=None,
        )
    )
