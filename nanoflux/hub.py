"""The Hub target every stage publishes to and reads from: the real Hub, or a local repository folder served by the
Hub stand-in (`localhub`) on loopback, both through `HfApi`; and the package versions recorded with each release."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import metadata

from huggingface_hub import HfApi, constants

from localhub import LocalHub


@contextlib.contextmanager
def open_target(hub_dir: str | None, token: str | None = None) -> Iterator[HfApi]:
    """An HfApi for the real Hub (token from the usual places), or for the local repository folder `hub_dir`."""
    if hub_dir is None:
        yield HfApi(token=token)
        return
    # The local folder is served on loopback; HF_HUB_OFFLINE (set for the embedded default) must not block it.
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        with LocalHub(hub_dir) as hub:
            yield HfApi(endpoint=hub.url, token=False)
    finally:
        constants.HF_HUB_OFFLINE = offline


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of `names` (None for one that is not installed), for provenance records."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
