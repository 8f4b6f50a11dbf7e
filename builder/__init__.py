"""NanoFlux dataset builder: Attacker / Defender / tool-augmented Judge rounds with novelty filtering.

The names below are the builder's public surface: what other stages (the trainer's training, sweeps and
evaluation) may use. They are imported when first used, so `import builder` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "BuildConfig": "builder.config",
    "BuildFolder": "builder.build_folder",
    "CurationConfig": "builder.config",
    "RoleConfig": "builder.config",
    "curate": "builder.curation",
    "write_rows": "builder.dataset",
    "DecontaminationConfig": "builder.decontamination",
    "check_contamination": "builder.decontamination",
    "load_reference": "builder.reference",
    "recipe_fingerprint": "builder.build",
    "PublishError": "builder.publish",
    "publish_preflight": "builder.publish",
    "publish_version": "builder.publish",
}
# Public names spelled otherwise inside their module (`publish`, `preflight` would collide with submodule names).
_ALIASES = {"check_contamination": "check", "publish_preflight": "preflight", "publish_version": "publish"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'builder' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), _ALIASES.get(name, name))
