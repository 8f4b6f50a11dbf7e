"""The sandbox child: confines itself, installs the audit policy, then runs the untrusted program.

This file is not imported by the builder: ``builder.sandbox`` passes its source to a fresh ``python -I -S``
(``-c``), so it uses the standard library only.  Its configuration arrives as JSON in ``argv[1]``; the untrusted
source is read from an inherited, already-unlinked file descriptor, never interpolated into this text. Being the
child's whole program, it stays one self-contained file (a module it imported would not be there).

The audit policy (``_policy``) is built to be unreachable and immutable from the guarded program:

* it is one function with no closure, no global or builtin look-ups (it is re-created with an empty globals
  dict), and every value it uses is a default argument of an immutable type (str, int, tuple, frozenset) or a
  C builtin; the only mutable thing, the created-files budget, is an ``itertools.count`` that can only advance;
* the interpreter holds it in its C-level hook list, the only reference once ``_install_policy`` returns;
* it never calls an object supplied by the program (exact type checks, no ``__fspath__``/``__repr__``/``__eq__``),
  so no program code ever runs while its frame is live, and it never raises on a violation:
* a violation writes one record to the result pipe and ends the process at once with ``VIOLATION_EXIT``; there
  is nothing to catch, and a closed or redirected pipe loses only the reason, never the verdict.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

VIOLATION_EXIT = 86
_LANDLOCK_WRITE = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 8)  # WRITE_FILE REMOVE_DIR/FILE MAKE_DIR/REG
_LANDLOCK_MAKE_SPECIAL = (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)  # CHAR SOCK FIFO BLOCK SYM
_LANDLOCK_READ = (1 << 2) | (1 << 3)  # READ_FILE READ_DIR


def read_roots() -> list[str]:
    """Paths the program may read (besides its own directory and /proc/<own pid>), symlinks resolved."""
    roots = (
        "/usr /lib /lib64 /lib32 /etc/ld.so.cache /etc/localtime /dev/null /dev/zero /dev/urandom /dev/random".split()
    )
    roots += [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]
    out: list[str] = []
    for p in roots:
        for q in (p, os.path.realpath(p)):
            if q and q not in out:
                out.append(q)
    return out


def _landlock(ctypes, syscall, root: str, roots: list[str]) -> str | None:
    import stat
    import struct

    c_long = ctypes.c_long
    abi = syscall(c_long(444), None, c_long(0), c_long(1))  # landlock_create_ruleset(NULL, 0, VERSION)
    if abi < 1:
        return None
    write = _LANDLOCK_WRITE | _LANDLOCK_MAKE_SPECIAL
    if abi >= 2:
        write |= 1 << 13  # REFER (never granted: no links or renames across hierarchies)
    if abi >= 3:
        write |= 1 << 14  # TRUNCATE
    handled = write | _LANDLOCK_READ | 1  # EXECUTE handled, never granted
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = struct.pack("QQQ", handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)[:size]
    rfd = syscall(c_long(444), ctypes.create_string_buffer(attr, size), c_long(size), c_long(0))
    if rfd < 0:
        return None
    try:

        def allow(path: str, access: int) -> None:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= (1 << 1) | (1 << 2) | (1 << 14)
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
                syscall(c_long(445), c_long(rfd), c_long(1), rule, c_long(0))  # LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)

        # The sandbox directory: regular files and directories only (no fifo, device, socket or symlink).
        allow(root, (handled & ~_LANDLOCK_MAKE_SPECIAL & ~(1 << 13) & ~1))
        allow("/proc/self", _LANDLOCK_READ)
        for p in roots:
            allow(p, _LANDLOCK_READ | (1 if p.startswith(("/usr", "/lib", sys.base_prefix)) else 0))
        if syscall(c_long(446), c_long(rfd), c_long(0)) != 0:
            return None
    finally:
        os.close(rfd)
    return f"landlock{abi}"


def _seccomp(ctypes, syscall) -> str | None:
    import struct

    if os.uname().machine != "x86_64" or struct.calcsize("P") != 8:
        return None
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow_, kill, enosys = 0x7FFF0000, 0x80000000, 0x00050000 | 38
    deny = (
        (41, 53, 57, 58, 59, 322)  # socket socketpair fork vfork execve execveat
        + (101, 200, 129, 297, 424, 434, 438)  # ptrace tkill rt_(tg)sigqueueinfo pidfd_*
        + (310, 311, 165, 166, 155, 161, 272, 308)  # process_vm_* mount umount2 pivot_root chroot unshare setns
        + (175, 176, 313, 246, 320, 169, 167, 168)  # modules kexec reboot swap
        + (321, 323, 298, 300, 303, 304, 425, 426, 427)  # bpf userfaultfd perf fanotify handles io_uring
        + (428, 429, 430, 431, 432, 433, 442, 179, 163)  # new mount API quotactl acct
        + (248, 249, 250, 170, 171, 164, 227, 159, 172, 173, 103)  # keys hostname clock iopl syslog
        + (133, 259, 112)  # mknod mknodat (fifos, devices) setsid
    )
    ins: list[list] = []
    labels: dict[str, int] = {}

    def op(code: int, k: int, jt=0, jf=0) -> None:
        ins.append([code, jt, jf, k])

    op(ld, 4)
    op(jeq, 0xC000003E, 0, "kill")  # AUDIT_ARCH_X86_64 only (no int 0x80 / x32 tricks)
    op(ld, 0)
    op(jge, 0x40000000, "kill", 0)
    for nr in deny:
        op(jeq, nr, "kill", 0)
    op(jeq, 435, "enosys", 0)  # clone3: let libc fall back to clone, whose flags we can inspect
    op(jeq, 56, "clone", 0)
    op(jeq, 62, "self", 0)  # kill
    op(jeq, 234, "self", 0)  # tgkill
    op(ret, allow_)
    labels["kill"] = len(ins)
    op(ret, kill)
    labels["enosys"] = len(ins)
    op(ret, enosys)
    labels["clone"] = len(ins)
    op(ld, 16)
    op(jset, 0x00010000, 0, 1)  # CLONE_THREAD: threads yes, processes no
    op(ret, allow_)
    op(ret, kill)
    labels["self"] = len(ins)
    op(ld, 16)
    op(jeq, os.getpid(), 0, 1)
    op(ret, allow_)
    op(ret, kill)
    code = b""
    for i, (c, jt, jf, k) in enumerate(ins):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        code += struct.pack("HBBI", c, jt, jf, k)

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(code, len(code))
    prog = Prog(len(ins), ctypes.addressof(buf))
    if syscall(ctypes.c_long(317), ctypes.c_long(1), ctypes.c_long(0), ctypes.byref(prog)) != 0:
        return None
    return "seccomp"


def _set_rlimits(cfg: dict, nproc: bool) -> None:
    import resource as r

    lim = [
        (r.RLIMIT_CPU, cfg["cpu"], cfg["cpu"] + 1),
        (r.RLIMIT_AS, cfg["mem"], cfg["mem"]),
        (r.RLIMIT_FSIZE, cfg["fsize"], cfg["fsize"]),
        (r.RLIMIT_CORE, 0, 0),
        (r.RLIMIT_NOFILE, cfg["nofile"], cfg["nofile"]),
    ]
    if nproc:
        lim.append((r.RLIMIT_NPROC, 0, 0))
    for res, soft, hard in lim:
        try:
            _, cur_hard = r.getrlimit(res)
            if cur_hard != r.RLIM_INFINITY:
                hard = min(hard, cur_hard)
                soft = min(soft, hard)
            r.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass


def _harden(cfg: dict, roots: list[str]) -> list[str]:
    """Apply the kernel layers the mode asks for; return the names of those that took effect."""
    layers: list[str] = []
    kernel = cfg["kernel"]
    libc = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            syscall = libc.syscall
            syscall.restype = ctypes.c_long
        except Exception:
            libc = None
    if libc is not None:
        c_long = ctypes.c_long
        # Die with the build: SIGKILL when the parent thread goes; and if it went before this line, leave now.
        if libc.prctl(ctypes.c_int(1), c_long(9), c_long(0), c_long(0), c_long(0)) == 0:
            layers.append("pdeathsig")
        if cfg["ppid"] and os.getppid() != cfg["ppid"]:
            os._exit(125)
    if libc is not None and kernel:
        if not cfg["bwrap"]:
            for flags in (0x40000000, 0x40000000 | 0x10000000):  # CLONE_NEWNET [| CLONE_NEWUSER]
                if libc.unshare(ctypes.c_int(flags)) == 0:
                    layers.append("netns")
                    break
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        if libc.prctl(ctypes.c_int(38), c_long(1), c_long(0), c_long(0), c_long(0)) == 0:  # NO_NEW_PRIVS
            layer = _landlock(ctypes, syscall, cfg["root"], roots)
            if layer:
                layers.append(layer)
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


def _policy(
    event,
    args,
    *,
    fd=-1,
    exit_code=VIOLATION_EXIT,
    write_roots=(),
    read_ok=(),
    block_exact=frozenset(),
    block_prefix=(),
    block_import=frozenset(),
    write_events=(),
    write_names=frozenset(),
    read_names=frozenset(),
    created=None,
    max_created=0,
    o_write=0,
    o_creat=0,
    t=type,
    s=str,
    b=bytes,
    i=int,
    n=len,
    rng=range,
    nxt=next,
    be=BaseException,
    pw=os.write,
    px=os._exit,
    lstat=os.lstat,
    readlink=os.readlink,
    getcwd=os.getcwd,
):
    """The audit hook (see the module docstring for why it looks like this)."""
    why = None
    try:
        checks = ()  # (path, dir_fd, write, creating)
        if event == "open":
            path = args[0]
            flags = args[2] if n(args) > 2 else None
            if t(flags) is not i or flags & o_write:
                if args[1] is None and (t(path) is s or t(path) is b) and path[:1] not in ("/", b"/"):
                    why = "open (write via relative os.open; its dir_fd is invisible)"
                checks = ((path, -1, True, t(flags) is not i or flags & o_creat),)
            elif args[1] is None and (t(path) is s or t(path) is b) and path[:1] not in ("/", b"/"):
                why = "open (read via relative os.open; its dir_fd is invisible)"
            else:
                checks = ((path, -1, False, False),)
        elif event in block_exact or event.startswith(block_prefix):
            why = event
        elif event == "import":
            name = args[0] if args else None
            if t(name) is not s or name in block_import or name.startswith("ctypes.") or name.startswith("_test"):
                why = "import " + (name if t(name) is s else "?")
        elif event in write_names:
            for ev, specs in write_events:
                if ev == event:
                    found = []
                    for k, d in specs:
                        if k < n(args):
                            found.append((args[k], args[d] if 0 <= d < n(args) else -1, True, event == "os.mkdir"))
                    checks = found
        elif event in read_names:
            checks = ((args[0] if args else ".", -1, False, False),)
        elif event == "sqlite3.connect":
            db = args[0] if args else None
            if not ((t(db) is s or t(db) is b) and db in (":memory:", "", b":memory:", b"")):
                checks = ((db, -1, True, True),)
        for path, dfd, writing, creating in checks:
            if why is not None:
                break
            if t(path) is i and not creating:
                continue  # an already open descriptor
            if t(path) is b:
                path = path.decode("utf-8", "surrogateescape")
            if t(path) is not s or "\x00" in path:
                why = event + " (a path that is not a plain str or bytes)"
                break
            if not path.startswith("/"):
                if t(dfd) is not i:
                    why = event + " (bad dir_fd)"
                    break
                base = getcwd() if dfd < 0 else readlink(f"/proc/self/fd/{dfd}")
                path = base + "/" + path
            # realpath: every existing component's symlink is followed, '..' applies to the resolved parent.
            todo = path.split("/")
            todo.reverse()
            parts: list = []
            hops = 0
            exists = True
            while todo:
                part = todo.pop()
                if part == "" or part == ".":
                    continue
                if part == "..":
                    if parts:
                        parts.pop()
                    continue
                parts.append(part)
                if not exists:
                    continue
                cur = "/" + "/".join(parts)
                try:
                    mode = lstat(cur).st_mode
                except be:
                    exists = False
                    continue
                if mode & 0o170000 == 0o120000:
                    hops += 1
                    if hops > 40:
                        why = event + " (symlink loop)"
                        break
                    target = readlink(cur)
                    parts.pop()
                    if target.startswith("/"):
                        parts = []
                    more = target.split("/")
                    more.reverse()
                    todo.extend(more)
            if why is not None:
                break
            real = "/" + "/".join(parts)
            roots = write_roots if writing else read_ok
            inside = real == "/dev/null"
            for r in roots:
                if real == r or real.startswith(r + "/"):
                    inside = True
                    break
            if not inside:
                why = f"{event} ({'write' if writing else 'read'}) {real}"
                break
            if creating and exists and real != "/dev/null":
                continue
            if creating and real != "/dev/null" and nxt(created) >= max_created:
                why = event + " (too many files created)"
    except be:
        why = "policy error on " + (event if t(event) is s else "?")
    if why is None:
        return None
    try:
        pw(fd, ("E blocked: " + why).replace("\n", " ")[:500].encode("utf-8", "replace") + b"\n")
    except be:
        pass
    px(exit_code)


def _install_policy(root: str, fd: int, roots: list[str], max_created: int, fork_guarded: bool) -> None:
    """Install ``_policy`` as the audit hook, bound to its data through immutable defaults only."""
    block_exact = frozenset(
        (
            "subprocess.Popen os.system os.fork os.forkpty os.kill os.killpg os.startfile os.link os.symlink pty.spawn"
            " signal.pthread_kill sys.settrace sys.setprofile sys.addaudithook sys._current_frames"
            " sys._current_exceptions resource.setrlimit resource.prlimit gc.get_objects gc.get_referrers"
            " gc.get_referents urllib.Request webbrowser.open sqlite3.enable_load_extension sqlite3.load_extension"
            " cpython.PyInterpreterState_New cpython.run_command cpython.run_file cpython.run_module"
            " cpython.run_interactivehook os.mkfifo os.mknod"
        ).split()
    )
    block_prefix = tuple(
        (
            "socket. ctypes. os.exec os.spawn os.posix_spawn sys.monitoring http.client. ftplib. smtplib. poplib."
            " imaplib. nntplib. telnetlib. syslog. winreg. _winapi. msvcrt. os.setuid os.setgid os.chroot"
        ).split()
    )
    block_import = {"ctypes", "_ctypes", "_lsprof"}
    block_import |= set("_xxsubinterpreters _xxinterpchannels _interpreters _interpchannels _interpqueues".split())
    if not fork_guarded:  # _posixsubprocess.fork_exec has no audit event; without seccomp, refuse it
        block_import |= {"_posixsubprocess", "multiprocessing", "_multiprocessing"}
    # event -> ((path arg index, dir_fd arg index or -1), ...) for paths that get modified
    write_events = (
        ("os.remove", ((0, 1),)),
        ("os.rmdir", ((0, 1),)),
        ("os.mkdir", ((0, 2),)),
        ("os.rename", ((0, 2), (1, 3))),
        ("os.chmod", ((0, 2),)),
        ("os.chown", ((0, 3),)),
        ("os.utime", ((0, 3),)),
        ("os.truncate", ((0, -1),)),
        ("os.setxattr", ((0, -1),)),
        ("os.removexattr", ((0, -1),)),
        ("shutil.copyfile", ((1, -1),)),
        ("shutil.copymode", ((1, -1),)),
        ("shutil.copystat", ((1, -1),)),
        ("shutil.copytree", ((1, -1),)),
        ("shutil.rmtree", ((0, 1),)),
        ("shutil.move", ((0, -1), (1, -1))),
        ("shutil.chown", ((0, -1),)),
        ("shutil.unpack_archive", ((1, -1),)),
        ("shutil.make_archive", ((0, -1),)),
    )
    own = os.path.realpath("/proc/self")
    hook = type(_policy)(_policy.__code__, {"__builtins__": {}}, "sandbox_policy")
    hook.__kwdefaults__ = dict(
        _policy.__kwdefaults__,
        **{
            "fd": fd,
            "write_roots": (os.path.realpath(root),),
            "read_ok": tuple([os.path.realpath(root), own] + roots),
            "block_exact": block_exact,
            "block_prefix": block_prefix,
            "block_import": frozenset(block_import),
            "write_events": write_events,
            "write_names": frozenset(e for e, _ in write_events),
            "read_names": frozenset(("os.listdir", "os.scandir", "os.getxattr", "os.listxattr")),
            "created": itertools.count(),
            "max_created": max_created,
            "o_write": os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
            "o_creat": os.O_CREAT,
        },
    )
    sys.addaudithook(hook)


def _close_loaders() -> None:
    """Audit-only mode: no fifo/device creation and no loading of native code the program wrote itself."""
    preload = (
        "math cmath _random _bisect _heapq _decimal _datetime _json _statistics _struct _socket binascii array"
        " unicodedata _pickle zlib _sha256 _md5 _sha1 _sha512 _sha3 _blake2 _contextvars _queue select _csv _opcode"
    )
    for name in preload.split():
        try:
            __import__(name)
        except ImportError:
            pass
    for name in sys.builtin_module_names:
        if name not in sys.modules and not name.startswith(("_xx", "_ctypes", "_test")):
            try:
                __import__(name)
            except ImportError:
                pass
    import _imp
    import posix

    for mod, attr in (
        (_imp, "create_dynamic"),
        (_imp, "create_builtin"),
        (_imp, "exec_dynamic"),
        (posix, "mkfifo"),
        (posix, "mknod"),
        (os, "mkfifo"),
        (os, "mknod"),
    ):
        if hasattr(mod, attr):
            delattr(mod, attr)


def _exec_untrusted(src: bytes, fd: int) -> None:
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
        exc.__traceback__ = tb = tb.tb_next if tb is not None else None  # drop this frame
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


def main() -> None:
    """Entry point: harden, report the layers, check the mode's requirements, install the policy, run."""
    cfg = json.loads(sys.argv[1])
    fd = cfg["fd"]
    try:
        roots = read_roots()
        layers = _harden(cfg, roots)
        os.write(fd, ("L " + ",".join(layers) + "\n").encode())
        missing = [x for x in cfg["require"] if not any(layer.startswith(x) for layer in layers)]
        if missing:
            os.write(fd, f"E sandbox_error: confinement incomplete (missing {','.join(missing)})\n".encode())
            os._exit(1)
        for name in list(sys.modules):
            if name == "ctypes" or name.startswith(("ctypes.", "_ctypes")):
                del sys.modules[name]
        with os.fdopen(cfg["code_fd"], "rb") as f:
            src = f.read()
        if cfg["lockdown"]:
            _close_loaders()
        if cfg["audit"]:
            _install_policy(cfg["root"], fd, roots, cfg["max_created"], "seccomp" in layers)
    except BaseException as exc:
        os.write(fd, f"E sandbox_error: {exc!r}\n".encode("utf-8", "replace"))
        raise
    del cfg, roots, layers
    _exec_untrusted(src, fd)


if __name__ == "__main__":
    main()
