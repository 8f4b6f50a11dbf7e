"""Moved to `localhub.jobs`; this name stays until every import is updated (issue #15's restructuring)."""

from localhub.jobs import JobError, JobRunner  # noqa: F401
