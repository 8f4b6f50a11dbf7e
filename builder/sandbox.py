"""Run untrusted, LLM-written Python (the Judge's verification programs) in a locked-down child process.

Layers, each independent of the others (the kernel ones are best effort and fall back silently):

* a fresh interpreter (``python -I -S -B -u``: isolated mode, no site-packages, clean environment),
  in its own session, with a private temporary directory as cwd, ``HOME`` and ``TMPDIR``;
* resource limits: ``RLIMIT_CPU`` (soft; hard = soft + 1), ``RLIMIT_AS``, ``RLIMIT_FSIZE``,
  ``RLIMIT_NOFILE``, ``RLIMIT_CORE = 0`` (and ``RLIMIT_NPROC = 0`` for non-root without seccomp),
  plus a wall-clock timeout enforced by the parent, which SIGKILLs the whole process group;
* a private network namespace (``unshare(CLONE_NEWNET)``, or with ``CLONE_NEWUSER`` when not root);
* Landlock: writes allowed only under the sandbox directory, reads only under the interpreter's
  prefix, ``/usr``, ``/lib*`` and a few device files; TCP bind/connect denied (ABI >= 4); signals and
  abstract unix sockets scoped to the sandbox (ABI >= 6); ptrace of outside processes denied
  (so ``/proc/<parent>/environ`` and its secrets are unreadable);
* all capabilities dropped (root keeps uid 0 but cannot raise hard limits or bypass file modes);
* seccomp (x86-64): kills the process on fork/vfork/non-thread clone, exec, socket, ptrace, mount,
  namespace, module, kexec, bpf, io_uring ... and on kill/tgkill aimed at another process;
* a ``sys.addaudithook`` policy installed before the untrusted code runs: it blocks sockets,
  subprocesses, fork/exec/spawn, signals, ctypes, sub-interpreters, tracing hooks, rlimit changes,
  writes (and file creation beyond a small budget) outside the sandbox directory and reads outside
  the allowed roots.  A violation is first written to a private result pipe (so catching the
  exception does not hide it) and then raised as ``SandboxViolation("blocked: ...")``.

The parent alone decides ``ok``: exit status 0, no wall timeout, and no failure record on the pipe.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CODE_FILE = "main.py"
_MAX_FILE_BYTES = 8 * 1024**2  # RLIMIT_FSIZE: any file the child writes, its stdout/stderr included
_MAX_OPEN_FILES = 64
_MAX_CREATED_FILES = 64  # new files/directories the audit hook lets the code create
_MAX_CHANNEL_BYTES = 64 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run."""

    wall_seconds: float = 5.0
    cpu_seconds: int = 3
    memory_bytes: int = 512 * 1024**2
    max_output_bytes: int = 8192


@dataclass
class SandboxResult:
    """What a sandboxed run produced; ``error`` is None exactly when ``ok``."""

    ok: bool
    stdout: str
    stderr: str
    error: str | None
    duration_s: float


# --------------------------------------------------------------------------------------------------
# Child bootstrap.  Passed with ``-c``; its configuration arrives as JSON in argv[1] and the untrusted
# source is read from a file in the sandbox directory, never interpolated into this text.
# --------------------------------------------------------------------------------------------------
_BOOTSTRAP = r'''
import os, sys


def _read_roots():
    roots = ["/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/localtime",
             "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random",
             sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]
    out = []
    for p in roots:
        for q in (p, os.path.realpath(p)):
            if q and q not in out:
                out.append(q)
    return out


def _landlock(ctypes, syscall, root, read_roots):
    import stat, struct
    L = ctypes.c_long
    abi = syscall(L(444), None, L(0), L(1))  # landlock_create_ruleset(NULL, 0, VERSION)
    if abi < 1:
        return None
    write = (1 << 1) | (1 << 4) | (1 << 5) | (0x7F << 6)  # WRITE_FILE, REMOVE_*, MAKE_*
    if abi >= 2:
        write |= 1 << 13  # REFER
    if abi >= 3:
        write |= 1 << 14  # TRUNCATE
    read = (1 << 2) | (1 << 3)  # READ_FILE, READ_DIR
    handled = write | read
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = struct.pack("QQQ", handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)[:size]
    attr_buf = ctypes.create_string_buffer(attr, size)
    rfd = syscall(L(444), attr_buf, L(size), L(0))
    if rfd < 0:
        return None
    try:
        def allow(path, access):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= (1 << 1) | (1 << 2) | (1 << 14)
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
                syscall(L(445), L(rfd), L(1), rule, L(0))  # LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)

        allow(root, handled)
        allow("/proc/self", read)
        for p in read_roots:
            allow(p, read)
        if syscall(L(446), L(rfd), L(0)) != 0:
            return None
    finally:
        os.close(rfd)
    return "landlock%d" % abi


def _seccomp(ctypes, syscall):
    import struct
    if os.uname().machine != "x86_64" or struct.calcsize("P") != 8:
        return None
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, ENOSYS = 0x7FFF0000, 0x80000000, 0x00050000 | 38
    deny = (41, 53, 57, 58, 59, 322,  # socket socketpair fork vfork execve execveat
            101, 200, 129, 297, 424, 434, 438,  # ptrace tkill rt_(tg)sigqueueinfo pidfd_*
            310, 311, 165, 166, 155, 161, 272, 308,  # process_vm_* mount umount2 pivot_root chroot unshare setns
            175, 176, 313, 246, 320, 169, 167, 168,  # modules kexec reboot swap
            321, 323, 298, 300, 303, 304, 425, 426, 427,  # bpf userfaultfd perf fanotify handles io_uring
            428, 429, 430, 431, 432, 433, 442, 179, 163,  # new mount API quotactl acct
            248, 249, 250, 170, 171, 164, 227, 159, 172, 173, 103)  # keys hostname clock iopl syslog
    ins, labels = [], {}

    def op(code, k, jt=0, jf=0):
        ins.append([code, jt, jf, k])

    op(LD, 4)
    op(JEQ, 0xC000003E, 0, "kill")  # AUDIT_ARCH_X86_64 only (no int 0x80 / x32 tricks)
    op(LD, 0)
    op(JGE, 0x40000000, "kill", 0)
    for nr in deny:
        op(JEQ, nr, "kill", 0)
    op(JEQ, 435, "enosys", 0)  # clone3: let libc fall back to clone, whose flags we can inspect
    op(JEQ, 56, "clone", 0)
    op(JEQ, 62, "self", 0)  # kill
    op(JEQ, 234, "self", 0)  # tgkill
    op(RET, ALLOW)
    labels["kill"] = len(ins)
    op(RET, KILL)
    labels["enosys"] = len(ins)
    op(RET, ENOSYS)
    labels["clone"] = len(ins)
    op(LD, 16)
    op(JSET, 0x00010000, 0, 1)  # CLONE_THREAD: threads yes, processes no
    op(RET, ALLOW)
    op(RET, KILL)
    labels["self"] = len(ins)
    op(LD, 16)
    op(JEQ, os.getpid(), 0, 1)
    op(RET, ALLOW)
    op(RET, KILL)
    code = b""
    for i, (c, jt, jf, k) in enumerate(ins):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        code += struct.pack("HBBI", c, jt, jf, k)

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(code, len(code))
    prog = Prog(len(ins), ctypes.addressof(buf))
    L = ctypes.c_long
    if syscall(L(317), L(1), L(0), ctypes.byref(prog)) != 0:  # seccomp(SET_MODE_FILTER)
        return None
    return "seccomp"


def _set_rlimits(cfg, nproc):
    import resource
    R = resource
    lim = [(R.RLIMIT_CPU, cfg["cpu"], cfg["cpu"] + 1), (R.RLIMIT_AS, cfg["mem"], cfg["mem"]),
           (R.RLIMIT_FSIZE, cfg["fsize"], cfg["fsize"]), (R.RLIMIT_CORE, 0, 0),
           (R.RLIMIT_NOFILE, cfg["nofile"], cfg["nofile"])]
    if nproc:
        lim.append((R.RLIMIT_NPROC, 0, 0))
    for res, soft, hard in lim:
        try:
            cur_soft, cur_hard = R.getrlimit(res)
            if cur_hard != R.RLIM_INFINITY:
                hard = min(hard, cur_hard)
                soft = min(soft, hard)
            R.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass


def _harden(cfg, read_roots):
    layers = []
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        linux = sys.platform.startswith("linux")
    except Exception:
        linux = False
    if linux:
        for flags in (0x40000000, 0x40000000 | 0x10000000):  # CLONE_NEWNET [| CLONE_NEWUSER]
            if libc.unshare(ctypes.c_int(flags)) == 0:
                layers.append("netns")
                break
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        L = ctypes.c_long
        if libc.prctl(ctypes.c_int(38), L(1), L(0), L(0), L(0)) == 0:  # PR_SET_NO_NEW_PRIVS
            layer = _landlock(ctypes, syscall, cfg["root"], read_roots)
            if layer:
                layers.append(layer)
        else:
            linux = False
    if linux:
        if os.getuid() == 0:
            import struct
            hdr = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
            if libc.capset(hdr, ctypes.create_string_buffer(24)) == 0:  # drop every capability
                layers.append("nocaps")
        layer = _seccomp(ctypes, syscall)
        if layer:
            layers.append(layer)
    # Without seccomp, a non-root child gets RLIMIT_NPROC = 0 as its fork ban (root ignores it).
    _set_rlimits(cfg, nproc=os.getuid() != 0 and "seccomp" not in layers)
    return layers


def _install_hook(root, fd, read_roots, max_created, fork_guarded):
    """Audit-hook policy.  Everything it uses is captured in its closure: rebinding builtins or
    module attributes from the untrusted code cannot change its decisions."""
    import posix
    _type, _str, _bytes, _int, _tuple, _len = type, str, bytes, int, tuple, len
    _write, _getcwd, _readlink, _stat = posix.write, posix.getcwd, posix.readlink, posix.stat
    _fspath, _pid = posix.fspath, posix.getpid()

    class SandboxViolation(BaseException):
        """Raised by the sandbox policy; BaseException so that `except Exception` does not swallow it."""

    SandboxViolation.__qualname__ = SandboxViolation.__name__ = "SandboxViolation"
    SandboxViolation.__module__ = "sandbox"

    O_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    O_CREAT = os.O_CREAT
    write_roots = (root,)
    read_ok = _tuple([root, "/proc/self", "/proc/thread-self", "/proc/%d" % _pid] + read_roots)
    state = [0, False]  # files created, violation recorded
    block_exact = frozenset((
        "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg",
        "os.startfile", "os.link", "os.symlink", "pty.spawn", "signal.pthread_kill",
        "sys.settrace", "sys.setprofile", "resource.setrlimit", "resource.prlimit",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "urllib.Request", "webbrowser.open", "sqlite3.enable_load_extension",
        "sqlite3.load_extension", "cpython.PyInterpreterState_New",
    ))
    block_prefix = ("socket.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn", "sys.monitoring",
                    "http.client.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.",
                    "telnetlib.", "syslog.", "winreg.", "_winapi.", "msvcrt.")
    block_import = {"ctypes", "_ctypes", "_xxsubinterpreters", "_xxinterpchannels", "_interpreters",
                    "_interpchannels", "_interpqueues", "_lsprof"}
    if not fork_guarded:  # _posixsubprocess.fork_exec has no audit event; without seccomp, refuse it
        block_import |= {"_posixsubprocess", "multiprocessing", "_multiprocessing"}
    # event -> ((path arg index, dir_fd arg index or None), ...) for paths that get modified
    write_events = {
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
        "os.rename": ((0, 2), (1, 3)), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
        "os.utime": ((0, 3),), "os.truncate": ((0, None),), "os.setxattr": ((0, None),),
        "os.removexattr": ((0, None),), "shutil.copyfile": ((1, None),),
        "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),),
        "shutil.copytree": ((1, None),), "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)),
        "shutil.chown": ((0, None),), "shutil.unpack_archive": ((1, None),),
        "shutil.make_archive": ((0, None),),
    }
    read_events = {"os.listdir": 0, "os.scandir": 0, "os.getxattr": 0, "os.listxattr": 0}

    def deny(what):
        if not state[1]:
            state[1] = True
            line = ("E blocked: " + what).replace("\n", " ")[:500] + "\n"
            _write(fd, line.encode("utf-8", "replace"))
        raise SandboxViolation("blocked: " + what)

    def norm(path, dir_fd):
        """Absolute, lexically normalised path (symlinks cannot be created, Landlock backs this up)."""
        if _type(path) is not _str and _type(path) is not _bytes:
            path = _fspath(path)
        if _type(path) is _bytes:
            path = path.decode("utf-8", "surrogateescape")
        if _type(path) is not _str:
            return None
        if not path.startswith("/"):
            if _type(dir_fd) is _int and dir_fd >= 0:
                base = _readlink("/proc/self/fd/%d" % dir_fd)
            else:
                base = _getcwd()
            path = base + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "" or part == ".":
                continue
            if part == "..":
                if parts:
                    parts.pop()
            else:
                parts.append(part)
        return "/" + "/".join(parts)

    def under(path, roots):
        for r in roots:
            if path == r or path.startswith(r + "/"):
                return True
        return False

    def check_write(event, path, dir_fd, creating):
        if _type(path) is _int:  # an already open descriptor
            return
        p = norm(path, dir_fd)
        if p is None or not (under(p, write_roots) or p == "/dev/null"):
            deny("%s (write) %s" % (event, p if p is not None else "?"))
        if creating and p != "/dev/null":
            try:
                _stat(p)
            except OSError:
                state[0] += 1
                if state[0] > max_created:
                    deny("%s (too many files created)" % event)

    def check_read(event, path, dir_fd):
        if _type(path) is _int:
            return
        p = norm(path if path is not None else ".", dir_fd)
        if p is None or not under(p, read_ok):
            deny("%s (read) %s" % (event, p if p is not None else "?"))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args[0], args[1], args[2] if _len(args) > 2 else None
            if _type(flags) is not _int or flags & O_WRITE:
                if mode is None and (_type(path) is _str or _type(path) is _bytes) and not path.startswith(
                        "/" if _type(path) is _str else b"/"):
                    deny("open (write via relative os.open; its dir_fd is invisible) %r" % (path,))
                check_write(event, path, None, _type(flags) is not _int or flags & O_CREAT)
            else:
                check_read(event, path, None)
        elif event in block_exact or event.startswith(block_prefix):
            deny(event)
        elif event == "import":
            name = args[0]
            if _type(name) is _str and (name in block_import or name.startswith("ctypes.")
                                        or name.startswith("_test")):
                deny("import " + name)
        elif event in write_events:
            for idx, dfd in write_events[event]:
                if idx < _len(args):
                    check_write(event, args[idx], args[dfd] if dfd is not None and dfd < _len(args) else None,
                                event == "os.mkdir")
        elif event in read_events:
            check_read(event, args[0] if args else None, None)
        elif event == "sqlite3.connect":
            db = args[0] if args else None
            if not (db == ":memory:" or db == "" or db == b":memory:"):
                if _type(db) is _str and db.startswith("file:"):
                    deny("sqlite3.connect (uri)")
                check_write(event, db, None, True)

    sys.addaudithook(hook)


def _exec_untrusted(src, fd):
    mod = type(sys)("__main__")
    mod.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = mod
    sys.argv[:] = ["main.py"]
    try:
        exec(compile(src, "main.py", "exec", dont_inherit=True), mod.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None else None  # drop this frame
        prev, cur = None, tb
        while cur is not None:  # and the policy's frames at the end (the bootstrap is "<string>")
            if prev is not None and cur.tb_frame.f_code.co_filename == "<string>":
                prev.tb_next = None
                break
            prev, cur = cur, cur.tb_next
        exc.__traceback__ = tb
        if isinstance(exc, MemoryError):
            try:
                os.write(fd, b"E memory_limit\n")
            except OSError:
                pass
            mod.__dict__.clear()
            tb = exc.__traceback__ = None
        try:
            sys.__excepthook__(type(exc), exc, tb)
        except BaseException:
            pass
        del exc, tb
        sys.exit(1)


def _main():
    import json
    cfg = json.loads(sys.argv[1])
    fd = cfg["fd"]
    try:
        read_roots = _read_roots()
        layers = _harden(cfg, read_roots)
        os.write(fd, ("L " + ",".join(layers) + "\n").encode())
        for name in list(sys.modules):
            if name == "ctypes" or name.startswith(("ctypes.", "_ctypes")):
                del sys.modules[name]
        with open(cfg["code"], "rb") as f:
            src = f.read()
        if cfg["audit"]:
            _install_hook(cfg["root"], fd, read_roots, cfg["max_created"], "seccomp" in layers)
    except BaseException as exc:
        os.write(fd, ("E sandbox_error: %r\n" % (exc,)).encode("utf-8", "replace"))
        raise
    del cfg, read_roots, layers
    _exec_untrusted(src, fd)


_main()
'''

_reported_layers: set[str] = set()
_reported_lock = threading.Lock()


def run_python(code: str, *, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``code`` in the sandbox and report what happened; never raises for what the code does."""
    return _run(code, limits)[0]


def _run(code: str, limits: SandboxLimits, *, audit: bool = True) -> tuple[SandboxResult, frozenset[str]]:
    """``run_python`` plus the confinement layers that took effect (``audit=False`` is for tests only)."""
    start = time.monotonic()
    root: str | None = None
    r_fd = w_fd = -1
    out_f = err_f = None
    try:
        root = os.path.realpath(tempfile.mkdtemp(prefix="nanoflux-sandbox-"))
        code_path = os.path.join(root, _CODE_FILE)
        with open(code_path, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(code)
        r_fd, w_fd = os.pipe()
        out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        cfg = {
            "root": root, "fd": w_fd, "code": code_path, "audit": audit,
            "cpu": max(1, int(limits.cpu_seconds)), "mem": int(limits.memory_bytes),
            "fsize": _MAX_FILE_BYTES, "nofile": _MAX_OPEN_FILES, "max_created": _MAX_CREATED_FILES,
        }
        env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        argv = [sys.executable, "-I", "-S", "-B", "-u", "-X", "utf8", "-c", _BOOTSTRAP, json.dumps(cfg)]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, cwd=root, env=env,
            pass_fds=(w_fd,), start_new_session=True,
        )
        os.close(w_fd)
        w_fd = -1
        try:
            timed_out, cpu_used = _wait(proc, limits.wall_seconds)
        finally:
            if proc.returncode is None:  # only on an unexpected error in _wait
                _killpg(proc.pid)
                proc.wait()
        duration = time.monotonic() - start
        layers, reasons = _read_channel(r_fd)
        stdout, out_size = _tail(out_f, limits.max_output_bytes)
        stderr, err_size = _tail(err_f, limits.max_output_bytes)
        error = _classify(
            proc.returncode, timed_out=timed_out, reasons=reasons, stderr=stderr, cpu_used=cpu_used,
            limits=limits, output_full=max(out_size, err_size) >= _MAX_FILE_BYTES,
        )
        _report_layers(layers)
        log.debug("sandbox run: rc=%s error=%s %.2fs layers=%s", proc.returncode, error, duration, ",".join(layers))
        return SandboxResult(error is None, stdout, stderr, error, duration), frozenset(layers)
    except Exception as exc:  # infrastructure failure (fork, disk, ...): report, do not raise
        log.exception("sandbox failed to run code")
        return SandboxResult(False, "", "", f"sandbox_error: {exc}", time.monotonic() - start), frozenset()
    finally:
        for fd in (r_fd, w_fd):
            if fd >= 0:
                os.close(fd)
        for f in (out_f, err_f):
            if f is not None:
                f.close()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


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


def _read_channel(fd: int) -> tuple[list[str], list[str]]:
    """Parse the result pipe: the bootstrap's layer line and any failure records."""
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
        if line.startswith("L ") and layers is None:  # the first one is the bootstrap's own
            layers = [x for x in line[2:].split(",") if x]
        elif line.startswith("E "):
            reasons.append(line[2:].strip()[:300])
    return layers or [], reasons


def _tail(f, limit: int) -> tuple[str, int]:
    """The last ``limit`` bytes of a captured stream (with a truncation marker), and its full size."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit))
    text = f.read(limit).decode("utf-8", "replace")
    if size > limit:
        text = f"[... {size - limit} bytes truncated ...]\n" + text
    return text, size


def _classify(
    rc: int, *, timed_out: bool, reasons: list[str], stderr: str, cpu_used: float | None,
    limits: SandboxLimits, output_full: bool,
) -> str | None:
    """The short failure reason, or None for a clean run."""
    if timed_out:
        return "timeout"
    if reasons:
        blocked = [r for r in reasons if r.startswith("blocked:")]
        return (blocked or reasons)[0]
    if rc == 0:
        return None
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
    last = stderr.rstrip().rsplit("\n", 1)[-1]
    if last.startswith("MemoryError"):
        return "memory_limit"
    if output_full:
        return "output_limit"
    return f"exit code {rc}"


def _report_layers(layers: list[str]) -> None:
    key = ",".join(layers)
    with _reported_lock:
        if key in _reported_layers:
            return
        _reported_layers.add(key)
    if not any(x.startswith("landlock") for x in layers) or "seccomp" not in layers:
        log.warning("sandbox: kernel confinement partly unavailable (active: %s); the audit hook remains",
                    key or "none")
    else:
        log.info("sandbox confinement layers: %s", key)
