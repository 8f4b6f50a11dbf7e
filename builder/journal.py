"""Moved to `nanoflux.journal`; this name stays until every import is updated (issue #15's restructuring)."""

from nanoflux.journal import *  # noqa: F403
from nanoflux.journal import Journal, scan, seal_path, damaged_path, write_atomic  # noqa: F401
