"""The one error hierarchy: every error NanoFlux raises for the user derives from `NanoFluxError`.

Its message says what is wrong and the fix, so the `nanoflux` command prints it as one line and exits non-zero, never
with a traceback; anything else is a bug, and its traceback is what a report needs.
"""

from __future__ import annotations


class NanoFluxError(Exception):
    """An error meant for the user: the message names what is wrong (field, value, file, endpoint) and the fix."""
