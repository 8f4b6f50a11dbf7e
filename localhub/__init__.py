"""A local, Hugging Face Hub-compatible HTTP server backed by a folder (stdlib only).

Two uses:
- the offline stand-in for the Hub in tests: point `HF_ENDPOINT` (or `HfApi(endpoint=...)`) at `LocalHub.url`
  and the real, unmodified `huggingface_hub` / `datasets` clients talk to it;
- NanoFlux's "local repository folder" target: a repo stored on disk with the same files, commits and version
  tags as on the Hub, served with `python -m localhub --root DIR --port 7861` so that
  `HF_ENDPOINT=http://127.0.0.1:7861 python -c 'import datasets; datasets.load_dataset("org/name", revision="v1")'`
  loads any version.

Modules: `store` (repos as plain, inspectable files: content-addressed blobs, commits, refs; atomic commits), `api`
(one handler per Hub endpoint), `routes` (which handler answers which path; the response envelope), `server`
(`LocalHub`, `python -m localhub`), `serving` (the loopback server lifecycle every local server shares), `jobs` (HF
Jobs as local processes), `testing` (fault injection and a scripted TGI server, for tests and benchmarks).

Uploads: as on the Hub, files matching an LFS pattern of the repo's `.gitattributes` (the initial one lists
*.parquet, *.arrow, ...) or over 10 MiB are uploaded through the LFS batch API (a signed PUT to this server),
the rest travel base64 in the commit call. Xet is not implemented: clients must run with `HF_HUB_DISABLE_XET=1`
when the `hf_xet` package is installed (it is not a NanoFlux dependency).

Endpoints: see `localhub.api`. Repo ids are always `namespace/name`. Pull requests, Xet and super-squash are not
implemented.
"""

from localhub.jobs import JobError, JobRunner
from localhub.server import LocalHub, main
from localhub.store import HubError, RepoStore, load_version

__all__ = ["HubError", "JobError", "JobRunner", "LocalHub", "RepoStore", "load_version", "main"]
