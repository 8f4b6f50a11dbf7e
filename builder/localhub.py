"""Moved to the `localhub` package; this name stays until every import is updated (issue #15's restructuring).
Interim: `LocalHub` here is the fault-injecting subclass, which tests patch until they import `localhub.testing`."""

from localhub import HubError, JobRunner, RepoStore, load_version, main  # noqa: F401
from localhub.testing import FaultyHub as LocalHub  # noqa: F401
