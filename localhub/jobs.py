"""Hugging Face Jobs, served by the local Hub-compatible server (`localhub`): the offline stand-in for HF Jobs.

`huggingface_hub`'s real jobs client (`HfApi.run_job`, `inspect_job`, `fetch_job_logs`, `cancel_job`, `list_jobs`)
talks to it unchanged. A job's command runs here as a local subprocess instead of in a container on a GPU: the image
and flavor are recorded but not used, which is the only difference a job can see. As on HF Jobs:

- the job gets its `environment` and its `secrets` as environment variables (secrets are never returned by the API,
  only their names), plus `HF_ENDPOINT` pointing at this server, which plays the Hub for the job (and
  `HF_HUB_DISABLE_XET=1`: this server speaks LFS only);
- its disk is ephemeral: it starts in an empty temporary folder that is deleted when it ends;
- `timeoutSeconds` kills it (stage ERROR, "Job timeout"), `cancel` kills it (stage CANCELED);
- stages go SCHEDULING -> RUNNING -> COMPLETED (exit 0) or ERROR; logs are served as server-sent events.

With `run=False` jobs stay SCHEDULING until cancelled, as on a Hub with no free hardware: what a test needs to check
a job's spec without running it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from nanoflux.errors import NanoFluxError

logger = logging.getLogger(__name__)

KEEP_ALIVE_S = 10.0  # longer than a non-following client's 5 s read timeout, which is how it knows the past is over
TERMINAL_STAGES = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
# Variables of the serving process that must not leak into a job: it sees only what the spec gives it.
_HIDDEN_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobError(NanoFluxError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Job:
    def __init__(self, job_id: str, namespace: str, spec: dict[str, Any], owner: dict[str, str]):
        self.id, self.namespace, self.spec, self.owner = job_id, namespace, spec, owner
        self.created_at = _now()
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.stage, self.message = "SCHEDULING", None
        self.logs: list[dict[str, str]] = []
        self.changed = threading.Condition()
        self.process: subprocess.Popen[bytes] | None = None
        self.cancelled = False

    def log(self, line: str) -> None:
        with self.changed:
            self.logs.append({"data": line, "timestamp": _now()})
            self.changed.notify_all()

    def finish(self, stage: str, message: str | None = None) -> None:
        with self.changed:
            if self.stage in TERMINAL_STAGES:
                return
            self.stage, self.message, self.finished_at = stage, message, _now()
            self.changed.notify_all()

    def info(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "id": self.id,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "dockerImage": spec.get("dockerImage"),
            "spaceId": spec.get("spaceId"),
            "owner": self.owner,
            "command": spec.get("command"),
            "arguments": spec.get("arguments", []),
            "environment": spec.get("environment", {}),
            # As on the Hub: which secrets a job has, never their values.
            "secrets": sorted(spec.get("secrets") or {}),
            "flavor": spec.get("flavor"),
            "labels": spec.get("labels"),
            "timeoutSeconds": spec.get("timeoutSeconds"),
            "status": {"stage": self.stage, "message": self.message},
        }


class JobRunner:
    """The jobs of one server. `base_env` is the environment a job starts from (PATH and the like); the serving
    process's tokens and offline switches are removed from it."""

    def __init__(self, *, run: bool = True, base_env: Mapping[str, str] | None = None):
        self.run = run
        env = dict(os.environ if base_env is None else base_env)
        self.base_env = {k: v for k, v in env.items() if k not in _HIDDEN_ENV}
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    def submit(self, namespace: str, spec: dict[str, Any], owner: dict[str, str], hub_url: str) -> _Job:
        command = spec.get("command")
        if not command or not isinstance(command, list) or not all(isinstance(part, str) for part in command):
            raise JobError(400, "command must be a non-empty list of strings")
        if not (spec.get("dockerImage") or spec.get("spaceId")):
            raise JobError(400, "dockerImage or spaceId is required")
        job = _Job(uuid.uuid4().hex[:24], namespace, spec, owner)
        with self._lock:
            self._jobs[job.id] = job
        if self.run:
            threading.Thread(target=self._execute, args=(job, hub_url), name=f"job-{job.id}", daemon=True).start()
        return job

    def get(self, namespace: str, job_id: str) -> _Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.namespace != namespace:
            raise JobError(404, f"Job {job_id} not found")
        return job

    def list(self, namespace: str) -> list[_Job]:
        with self._lock:
            return [job for job in self._jobs.values() if job.namespace == namespace]

    def cancel(self, namespace: str, job_id: str) -> _Job:
        job = self.get(namespace, job_id)
        job.cancelled = True
        if job.process is not None and job.process.poll() is None:
            _kill(job.process)
        job.finish("CANCELED", "Cancelled by user")
        return job

    def close(self) -> None:
        """Kill every job still running (the server is going away)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.stage not in TERMINAL_STAGES:
                self.cancel(job.namespace, job.id)

    def events(self, job: _Job, *, follow: bool) -> Iterator[bytes]:
        """The job's log lines as server-sent events; with `follow`, until the job ends."""
        sent, quiet_since = 0, time.monotonic()
        while True:
            with job.changed:
                if follow and sent == len(job.logs) and job.stage not in TERMINAL_STAGES:
                    job.changed.wait(timeout=1.0)
                lines, done = job.logs[sent:], job.stage in TERMINAL_STAGES
            for line in lines:
                yield f"data: {json.dumps(line)}\n\n".encode()
            sent += len(lines)
            if not follow or (done and sent == len(job.logs)):
                return
            if lines:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEP_ALIVE_S:
                # A comment line: clients ignore it, and writing it finds out when a client has gone away.
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()

    def _execute(self, job: _Job, hub_url: str) -> None:
        spec = job.spec
        env = {
            **self.base_env,
            **(spec.get("environment") or {}),
            **(spec.get("secrets") or {}),
            "HF_ENDPOINT": hub_url,
            "HF_HUB_DISABLE_XET": "1",
        }
        env = {k: str(v) for k, v in env.items()}
        workdir = tempfile.mkdtemp(prefix=f"localhub-job-{job.id}-")
        timeout = spec.get("timeoutSeconds")
        try:
            job.log("===== Job started =====")
            job.process = subprocess.Popen(
                spec["command"] + list(spec.get("arguments") or []),
                cwd=workdir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so a timeout or cancel kills all of it
            )
        except OSError as err:
            job.log(f"cannot start the command: {err}")
            job.finish("ERROR", f"Cannot start the command: {err}")
            shutil.rmtree(workdir, ignore_errors=True)
            return
        with job.changed:
            job.stage, job.started_at = "RUNNING", _now()
            job.changed.notify_all()
        timer = threading.Timer(float(timeout), self._time_out, args=(job,)) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        assert job.process.stdout is not None
        for raw in job.process.stdout:
            job.log(raw.decode(errors="replace").rstrip("\n"))
        code = job.process.wait()
        if timer is not None:
            timer.cancel()
        shutil.rmtree(workdir, ignore_errors=True)  # ephemeral disk: whatever the job did not push is gone
        if code == 0:
            job.finish("COMPLETED")
        elif not job.cancelled:
            job.finish("ERROR", f"Job failed with exit code: {code}")
        logger.info("job %s ended: %s", job.id, job.stage)

    def _time_out(self, job: _Job) -> None:
        if job.process is not None and job.process.poll() is None:
            job.finish("ERROR", "Job timeout")
            _kill(job.process)


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
