"""A local, Hugging Face Hub-compatible HTTP server backed by a folder (stdlib only).

Two uses:
- the offline stand-in for the Hub in tests: point `HF_ENDPOINT` (or `HfApi(endpoint=...)`) at `LocalHub.url`
  and the real, unmodified `huggingface_hub` / `datasets` clients talk to it;
- NanoFlux's "local repository folder" target: a repo stored on disk with the same files, commits and version
  tags as on the Hub, served with `python -m localhub --root DIR --port 7861` so that
  `HF_ENDPOINT=http://127.0.0.1:7861 python -c 'import datasets; datasets.load_dataset("org/name", revision="v1")'`
  loads any version.

Storage (plain files, inspectable; repos are snapshots, not git):

    root/{datasets,models,spaces}/<namespace>/<name>/
        meta.json               {"private": bool, "created_at": iso}
        refs.json               {"branches": {"main": sha}, "tags": {"v1": sha}}
        commits/<sha>.json      {"parent", "title", "description", "author", "date", "files": {path: entry}}
        blobs/<sha256>          file contents, content-addressed
    where a file entry is {"sha256", "size", "oid"} (+ "lfs": true); oid is the git blob sha1 of the content, or of
    the LFS pointer for LFS files, as the Hub reports it.

A commit id is the sha1 of its canonical JSON. Every file is written atomically (temp file + os.replace) and a commit
becomes visible only when `refs.json` is replaced, so a crash mid-commit leaves no visible change.

Uploads: as on the Hub, files matching an LFS pattern of the repo's `.gitattributes` (the initial one lists
*.parquet, *.arrow, ...) or over 10 MiB are uploaded through the LFS batch API (a signed PUT to this server),
the rest travel base64 in the commit call. Xet is not implemented: clients must run with `HF_HUB_DISABLE_XET=1`
when the `hf_xet` package is installed (it is not a NanoFlux dependency).

Endpoints (what huggingface_hub 2.4 and datasets 5.2 call): whoami-v2, repos/create, repos/delete, validate-yaml,
repo info (+ /revision/{rev}), preupload, commit, tag, branch, refs, tree (paginated), paths-info, commits,
settings, auth-check, LFS batch + upload + verify, GET/HEAD resolve (Range supported), and with a `JobRunner` the
HF Jobs API (run, inspect, list, logs, cancel; see localhub.jobs). Anything else is a
plain 404, which is what clients expect for optional services (parquet export, croissant, dataset viewer).
Repo ids are always `namespace/name`. Pull requests, Xet and super-squash are not implemented.
"""

from localhub.jobs import JobError, JobRunner
from localhub.server import LocalHub, main
from localhub.store import HubError, RepoStore, load_version

__all__ = ["HubError", "JobError", "JobRunner", "LocalHub", "RepoStore", "load_version", "main"]
