"""Moved to `nanoflux.models`; this name stays until every import is updated (issue #15's restructuring)."""

from nanoflux.models import *  # noqa: F403
from nanoflux.models import DEFAULT_MODEL_ID, PACKAGED_MODELS, cache_root, embedded_model_path, gguf_path, model_path, packaged  # noqa: F401
