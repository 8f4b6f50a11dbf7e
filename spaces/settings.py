"""The Space's settings (`Settings.from_env`: a Space variable wins over the README front matter, which wins over the
default; the variables are listed in app.py's docstring), and how the page names the base model (`model_label`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# What the local run's converted packaged model carries (builder/embedded.py): the Hub id it was made from.
_PACKAGED_MARKER = "nanoflux_embedded.json"


class SettingsError(ValueError):
    """A Space setting with a bad value; the message names the variable, the value and the fix."""


# --- settings --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What the Space shows and its limits (see the module docstring for the variables)."""

    dataset: str | None = None
    base_model: str = DEFAULT_BASE_MODEL
    base_model_folder: str | None = None
    adapters: list[str] = field(default_factory=list)
    results: str | None = None
    max_prompt_chars: int = 4000
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 256
    default_new_tokens: int = 64
    concurrency: int = 1
    queue_size: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, readme: Path | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        front = _front_matter(readme or APP_DIR / "README.md")
        models = [str(m) for m in front.get("models") or []]
        datasets = [str(d) for d in front.get("datasets") or []]
        adapters = environ.get("NANOFLUX_ADAPTERS")
        default_results = APP_DIR / "results" / "results.json"
        settings = cls(
            dataset=environ.get("NANOFLUX_DATASET") or (datasets[0] if datasets else None),
            base_model=environ.get("NANOFLUX_BASE_MODEL") or (models[0] if models else DEFAULT_BASE_MODEL),
            base_model_folder=environ.get("NANOFLUX_BASE_MODEL_FOLDER") or None,
            adapters=[a.strip() for a in adapters.split(",") if a.strip()] if adapters is not None else models[1:],
            results=environ.get("NANOFLUX_RESULTS") or (str(default_results) if default_results.is_file() else None),
            max_prompt_chars=_int(environ, "NANOFLUX_MAX_PROMPT_CHARS", 4000, 1, 100_000),
            max_prompt_tokens=_int(environ, "NANOFLUX_MAX_PROMPT_TOKENS", 1024, 8, 32_768),
            max_new_tokens=_int(environ, "NANOFLUX_MAX_NEW_TOKENS", 256, 1, 4096),
            concurrency=_int(environ, "NANOFLUX_CONCURRENCY", 1, 1, 64),
            queue_size=_int(environ, "NANOFLUX_QUEUE_SIZE", 16, 1, 1000),
        )
        settings.default_new_tokens = min(settings.default_new_tokens, settings.max_new_tokens)
        return settings


def _front_matter(readme: Path) -> dict[str, Any]:
    from huggingface_hub.repocard import metadata_load

    return (metadata_load(readme) or {}) if readme.is_file() else {}


def _int(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(
            f"{name}: not a whole number (got {raw!r}). Fix: set it to a number from {low} to {high}"
        ) from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: out of range (got {value}). Fix: set it to a number from {low} to {high}")
    return value


def model_label(model: str, folder: str | None = None) -> str:
    """The base model as the page names it: its Hub id, never a cache path. A local copy (`folder`) or a model
    folder that is a converted packaged model (its marker names the id) reads `<id> (packaged)`; another local copy
    `<id> (local copy)`; a plain folder its name."""
    for candidate in (folder, model):
        if candidate and (Path(candidate) / _PACKAGED_MARKER).is_file():
            try:
                model_id = json.loads((Path(candidate) / _PACKAGED_MARKER).read_text(encoding="utf-8")).get("model_id")
            except (OSError, ValueError):
                model_id = None
            if candidate == folder or model_id:
                return f"{model_id or model} (packaged)"
    if folder:
        return f"{model} (local copy)"
    if Path(model).is_dir():
        return f"{Path(model).name} (local folder)"
    return model
