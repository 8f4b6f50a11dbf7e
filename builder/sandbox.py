"""Run untrusted, LLM-written Python (the Judge's verification programs) in a confined child process.

The sandbox fails closed: untrusted code runs only under real isolation, one of these modes
(``confinement_mode()`` says which this machine offers, ``require_confinement()`` refuses before any compute):

* ``bwrap`` (preferred): bubblewrap with ``--unshare-all`` (user, mount, PID, network, IPC, UTS, cgroup
  namespaces), ``--die-with-parent``, ``--new-session``, uid 65534, no capabilities, read-only binds of ``/usr``,
  ``/lib*`` and the interpreter's prefix only, a fresh ``/proc`` and ``/dev``, and a private size-capped tmpfs as
  working directory (nothing of the sandbox lives on the host's disk); the kernel layers below apply inside too;
* ``kernel``: the child confines itself: Landlock (reads only under the interpreter's prefix, ``/usr``,
  ``/lib*``, a few device files and its own directory; writes of regular files and directories only there; TCP
  and signals scoped where the ABI allows), seccomp on x86-64 (kills fork, exec, socket, ptrace, mount, mknod,
  setsid, namespaces ...), a private network namespace, all capabilities dropped, ``PR_SET_PDEATHSIG``;
  both Landlock and seccomp must take effect or the child refuses to run the program;
* neither: ``SandboxUnavailableError`` naming the fix (install bubblewrap), unless ``allow_unconfined`` is set, in
  which case the run is logged as unconfined (``audit`` mode: best-effort kernel layers, the audit hook, native
  loaders and fifo/device creation removed).

In every mode: a fresh ``python -I -S -B -u``, ``RLIMIT_CPU/AS/FSIZE/NOFILE/CORE``, a wall-clock timeout
(SIGKILL of the process group), and the audit hook of ``builder.sandbox_child`` as a last layer: it resolves
paths with realpath semantics, blocks sockets, processes, ctypes, fifos and writes outside, keeps no state the
program can reach, and ends the process with ``VIOLATION_EXIT`` on a violation, so the verdict survives a
closed or redirected result pipe. The parent alone decides ``ok``: exit status 0, no timeout, the child's layer
report present, and no failure record.

Host working folders (``kernel`` and ``audit`` modes) are named ``nanoflux-sandbox-<pid>-*``: they are removed
after each run and at exit, and folders of dead processes are swept on the first run of a process.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.sandbox_child import VIOLATION_EXIT
from nanoflux.errors import NanoFluxError

if TYPE_CHECKING:
    from builder.config import SandboxConfig

log = logging.getLogger(__name__)

MODES = ("bwrap", "kernel")
_PREFIX = "nanoflux-sandbox-"
_BWRAP_ROOT = "/sandbox"
_BWRAP_UID = 65534
_MAX_FILE_BYTES = 8 * 1024**2  # RLIMIT_FSIZE: any file the child writes, its stdout/stderr included
_TMPFS_BYTES = 64 * 1024**2
_MAX_OPEN_FILES = 64
_MAX_CREATED_FILES = 64  # new files/directories the audit hook lets the code create
_MAX_CHANNEL_BYTES = 64 * 1024
_CHILD_SOURCE = (Path(__file__).parent / "sandbox_child.py").read_text(encoding="utf-8")
_FIX = (
    "install bubblewrap (`apt-get install -y bubblewrap`; it needs user namespaces) or run on Linux >= 5.13 "
    "x86-64 with Landlock and seccomp; or, knowing the Judge's programs then run with the audit hook only, "
    "set `sandbox.allow_unconfined: true`"
)


class SandboxUnavailableError(NanoFluxError, RuntimeError):
    """No real confinement on this machine and ``allow_unconfined`` is not set."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run; ``allow_unconfined`` permits the audit-hook-only fallback."""

    wall_seconds: float = 5.0
    cpu_seconds: int = 3
    memory_bytes: int = 512 * 1024**2
    max_output_bytes: int = 8192
    allow_unconfined: bool = False


@dataclass
class SandboxResult:
    """What a sandboxed run produced; ``error`` is None exactly when ``ok``."""

    ok: bool
    stdout: str
    stderr: str
    error: str | None
    duration_s: float


# --- confinement detection --------------------------------------------------------------------------------


def _bwrap_argv(bwrap: str) -> list[str]:
    """bubblewrap's command line: every namespace, read-only system and interpreter, private tmpfs cwd."""
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--uid",
        str(_BWRAP_UID),
        "--gid",
        str(_BWRAP_UID),
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for path in ("/etc/ld.so.cache", "/etc/localtime"):
        argv += ["--ro-bind-try", path, path]
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    for p in sorted(prefixes):
        if p != "/" and not p.startswith("/usr/") and p != "/usr":
            argv += ["--ro-bind", p, p]
    argv += [
        "--size",
        str(_TMPFS_BYTES),
        "--tmpfs",
        _BWRAP_ROOT,
        "--chdir",
        _BWRAP_ROOT,
        "--setenv",
        "HOME",
        _BWRAP_ROOT,
        "--setenv",
        "TMPDIR",
        _BWRAP_ROOT,
        "--",
    ]
    return argv


@functools.lru_cache(maxsize=1)
def confinement_mode() -> str | None:
    """The real confinement this machine offers: ``"bwrap"``, ``"kernel"``, or None (probed once per process)."""
    if not sys.platform.startswith("linux"):
        return None
    probe = SandboxLimits(wall_seconds=10.0, cpu_seconds=5)
    for mode in MODES:
        if mode == "bwrap" and shutil.which("bwrap") is None:
            log.info("sandbox: bubblewrap not installed")
            continue
        res, layers = _run("print('ok')", probe, mode=mode)
        if res.ok and res.stdout == "ok\n":
            log.info("sandbox confinement: %s (layers: %s)", mode, ",".join(sorted(layers)))
            return mode
        log.info("sandbox: %s confinement unavailable: %s %s", mode, res.error, res.stderr.strip()[-300:])
    return None


def require_confinement(config: SandboxConfig | None = None, *, allow_unconfined: bool | None = None) -> str:
    """The mode untrusted code will run in; raises before any compute when there is none and none is allowed.

    Raises:
        SandboxUnavailableError: no bubblewrap and no kernel layers, and ``allow_unconfined`` is false.
    """
    allowed = allow_unconfined if allow_unconfined is not None else bool(config and config.allow_unconfined)
    mode = confinement_mode()
    if mode is not None:
        return mode
    if not allowed:
        raise SandboxUnavailableError(f"no sandbox confinement is available on this machine. Fix: {_FIX}")
    log.warning(
        "sandbox: NO confinement available; running untrusted code with the audit hook only "
        "(sandbox.allow_unconfined is true)"
    )
    return "audit"


# --- running ----------------------------------------------------------------------------------------------


def run_python(code: str, *, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``code`` in the sandbox and report what happened; never raises for what the code does.

    Raises:
        SandboxUnavailableError: no confinement is available and ``limits.allow_unconfined`` is false.
    """
    mode = require_confinement(allow_unconfined=limits.allow_unconfined)
    return _run(code, limits, mode=mode)[0]


def _run(
    code: str, limits: SandboxLimits, *, mode: str, audit: bool = True, kernel: bool = True
) -> tuple[SandboxResult, frozenset[str]]:
    """One run in ``mode`` plus the layers that took effect (``audit``/``kernel=False``: tests only)."""
    _sweep_once()
    start = time.monotonic()
    root: str | None = None
    r_fd = w_fd = -1
    files = []
    try:
        code_f, out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile(), tempfile.TemporaryFile()
        files = [code_f, out_f, err_f]
        code_f.write(code.encode("utf-8", "backslashreplace"))
        code_f.seek(0)
        if mode == "bwrap":
            root = None
            child_root = _BWRAP_ROOT
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        else:
            root = _make_root()
            child_root = root
            env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        r_fd, w_fd = os.pipe()
        is_root = os.getuid() == 0
        require = {
            "bwrap": ["pdeathsig"],
            "kernel": ["pdeathsig", "landlock", "seccomp"] + (["nocaps"] if is_root else []),
        }
        cfg = {
            "root": child_root,
            "fd": w_fd,
            "code_fd": code_f.fileno(),
            "audit": audit,
            "kernel": kernel,
            "bwrap": mode == "bwrap",
            "lockdown": mode == "audit",
            "require": require.get(mode, []) if kernel else [],
            "ppid": 0 if mode == "bwrap" else os.getpid(),
            "cpu": max(1, int(limits.cpu_seconds)),
            "mem": int(limits.memory_bytes),
            "fsize": _MAX_FILE_BYTES,
            "nofile": _MAX_OPEN_FILES,
            "max_created": _MAX_CREATED_FILES,
        }
        argv = [sys.executable, "-I", "-S", "-B", "-u", "-X", "utf8", "-c", _CHILD_SOURCE, json.dumps(cfg)]
        if mode == "bwrap":
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                raise SandboxUnavailableError(f"bubblewrap is not installed. Fix: {_FIX}")
            argv = _bwrap_argv(bwrap) + [os.path.realpath(sys.executable)] + argv[1:]  # the venv is not bound
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_f,
            stderr=err_f,
            cwd=root or "/",
            env=env,
            pass_fds=(w_fd, code_f.fileno()),
            start_new_session=True,
        )
        os.close(w_fd)
        w_fd = -1
        code_f.close()
        try:
            timed_out, cpu_used = _wait(proc, limits.wall_seconds)
        finally:
            if proc.returncode is None:  # only on an unexpected error in _wait
                _killpg(proc.pid)
                proc.wait()
        duration = time.monotonic() - start
        rc = proc.returncode
        if mode == "bwrap" and 128 < rc < 128 + 65:  # bwrap reports its command's death by signal N as 128 + N
            rc = 128 - rc
            cpu_used = duration  # bwrap's rusage leaves out its grandchild; wall time bounds the CPU time from above
        layers, reasons = _read_channel(r_fd)
        stdout, out_size = _tail(out_f, limits.max_output_bytes)
        stderr, err_size = _tail(err_f, limits.max_output_bytes)
        error = _classify(
            rc,
            timed_out=timed_out,
            reasons=reasons,
            stderr=stderr,
            cpu_used=cpu_used,
            limits=limits,
            output_full=max(out_size, err_size) >= _MAX_FILE_BYTES,
            reported=layers is not None,
        )
        log.debug("sandbox run (%s): rc=%s error=%s %.2fs layers=%s", mode, rc, error, duration, layers)
        return SandboxResult(error is None, stdout, stderr, error, duration), frozenset(layers or ())
    except SandboxUnavailableError:
        raise
    except Exception as exc:  # infrastructure failure (fork, disk, ...): report, do not raise
        log.exception("sandbox failed to run code")
        return SandboxResult(False, "", "", f"sandbox_error: {exc}", time.monotonic() - start), frozenset()
    finally:
        for fd in (r_fd, w_fd):
            if fd >= 0:
                os.close(fd)
        for f in files:
            f.close()
        if root is not None:
            _remove_root(root)


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[bool, float | None]:
    """Wait up to ``timeout`` s, SIGKILL the process group, reap; return (timed_out, cpu seconds used)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = -1
    if pidfd < 0:  # no pidfd: the group can only be killed safely before the leader is reaped
        try:
            proc.wait(timeout=timeout)
            return False, None
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait()
            return True, None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        timed_out = not poller.poll(max(0.0, timeout) * 1000)
    finally:
        os.close(pidfd)
    # The leader is alive or a zombie, so its pid cannot have been recycled: killing the group is safe.
    _killpg(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return timed_out, usage.ru_utime + usage.ru_stime


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_channel(fd: int) -> tuple[list[str] | None, list[str]]:
    """Parse the result pipe: the child's layer line (None when missing) and any failure records."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < _MAX_CHANNEL_BYTES:
        try:
            chunk = os.read(fd, _MAX_CHANNEL_BYTES)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    layers: list[str] | None = None
    reasons: list[str] = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("L ") and layers is None:  # the first one is the child's own, before any program
            layers = [x for x in line[2:].split(",") if x]
        elif line.startswith("E "):
            reasons.append(line[2:].strip()[:300])
    return layers, reasons


def _tail(f, limit: int) -> tuple[str, int]:
    """The last ``limit`` bytes of a captured stream (with a truncation marker), and its full size."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit))
    text = f.read(limit).decode("utf-8", "replace")
    if size > limit:
        text = f"[... {size - limit} bytes truncated ...]\n" + text
    return text, size


def _classify(
    rc: int,
    *,
    timed_out: bool,
    reasons: list[str],
    stderr: str,
    cpu_used: float | None,
    limits: SandboxLimits,
    output_full: bool,
    reported: bool = True,
) -> str | None:
    """The short failure reason, or None for a clean run."""
    if timed_out:
        return "timeout"
    if reasons:
        blocked = [r for r in reasons if r.startswith("blocked:")]
        return (blocked or reasons)[0]
    if rc == VIOLATION_EXIT:
        return "blocked: policy violation (its record was lost)"
    if rc == 0:
        return None if reported else "sandbox_error: the child never reported its confinement"
    if rc < 0:
        sig = -rc
        if sig == signal.SIGSYS:
            return "blocked: forbidden syscall"
        if sig == signal.SIGXCPU:
            return "cpu_limit"
        if sig == signal.SIGKILL and cpu_used is not None and cpu_used >= limits.cpu_seconds - 0.05:
            return "cpu_limit"
        if sig == signal.SIGXFSZ:
            return "output_limit"
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    if not reported:
        return f"sandbox_error: the child never reported its confinement (exit code {rc}): {stderr.strip()[-200:]}"
    last = stderr.rstrip().rsplit("\n", 1)[-1]
    if last.startswith("MemoryError"):
        return "memory_limit"
    if output_full:
        return "output_limit"
    return f"exit code {rc}"


# --- host working folders ---------------------------------------------------------------------------------

_live_roots: set[str] = set()
_roots_lock = threading.Lock()
_swept = threading.Event()
_STALE_PATTERN = re.compile(re.escape(_PREFIX) + r"(\d+)-")


def _make_root() -> str:
    root = os.path.realpath(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
    with _roots_lock:
        _live_roots.add(root)
    return root


def _remove_root(root: str) -> None:
    shutil.rmtree(root, ignore_errors=True)
    with _roots_lock:
        _live_roots.discard(root)


@atexit.register
def _remove_live_roots() -> None:
    with _roots_lock:
        roots = list(_live_roots)
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_dirs(tmp: str | None = None) -> list[str]:
    """Remove ``nanoflux-sandbox-<pid>-*`` folders whose process is gone (a build killed with SIGKILL);
    folders of the old format (no pid) older than an hour go too. Returns the removed paths."""
    tmp = tmp or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(tmp)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        path = os.path.join(tmp, name)
        match = _STALE_PATTERN.match(name)
        try:
            if match:
                pid = int(match.group(1))
                stale = pid != os.getpid() and not _pid_alive(pid)
            else:
                stale = time.time() - os.lstat(path).st_mtime > 3600
        except OSError:
            continue
        if stale and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("sandbox: removed %d stale working folder(s) of dead processes", len(removed))
    return removed


def _sweep_once() -> None:
    if not _swept.is_set():
        _swept.set()
        sweep_stale_dirs()
