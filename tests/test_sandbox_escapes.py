"""Escape attempts against the Judge's sandbox, each run under every confinement mode this machine offers.

Modes: ``bwrap`` (bubblewrap, when installed and working), ``kernel`` (Landlock + seccomp + netns, when the kernel
has them) and ``hook`` (the audit hook alone: no kernel layer at all, the weakest configuration). Every program must
be contained (no secret in its output, no file, process or connection outside) and reported as a failed run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import sandbox
from builder.sandbox import SandboxLimits, SandboxUnavailableError, _run
from builder.tools import python_tool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox targets Linux")

LIMITS = SandboxLimits(wall_seconds=3.0, cpu_seconds=1, memory_bytes=256 * 1024**2, max_output_bytes=4096)
SECRET = "hf_PLANTEDsecretTOKEN0123456789"
REPO = Path(__file__).resolve().parents[1]


def _available_modes() -> list[str]:
    modes = []
    for mode in sandbox.MODES:
        if mode == "bwrap" and not sandbox.shutil.which("bwrap"):
            continue
        res, _ = _run("print('ok')", LIMITS, mode=mode)
        if res.ok:
            modes.append(mode)
    return modes + ["hook"]


MODES = _available_modes()


def run_in(mode: str, code: str):
    if mode == "hook":
        return _run(code, LIMITS, mode="audit", kernel=False)[0]
    return _run(code, LIMITS, mode=mode)[0]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def world(tmp_path):
    """A planted token file, a target path outside the sandbox, and a loopback listener that must stay silent."""
    token = tmp_path / "hub" / "token"
    token.parent.mkdir()
    token.write_text(SECRET)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield {
        "token": str(token),
        "target": str(tmp_path / "escaped.txt"),
        "port": srv.getsockname()[1],
        "ppid": os.getpid(),
        "rel_token": os.path.relpath(token, "/"),
    }
    try:
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()
    assert not (tmp_path / "escaped.txt").exists()


ESCAPES = {
    "hook_neutering_via_traceback_frames": (
        """
import sys
def neuter():
    try:
        open({token!r})
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None:
            for v in list(tb.tb_frame.f_locals.values()):
                for c in getattr(v, '__closure__', None) or ():
                    c.cell_contents = lambda *a, **k: None
            tb = tb.tb_next
neuter()
print(open({token!r}).read())
"""
    ),
    "hook_frame_via_signal_handler": (
        """
import signal, sys
def grab(sig, frame):
    while frame is not None:
        frame.f_locals.clear()
        for k, v in list(frame.f_locals.items()):
            if isinstance(v, tuple):
                frame.f_locals[k] = ('/',)
        frame = frame.f_back
signal.signal(signal.SIGALRM, grab)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
for _ in range(20000):
    try:
        print(open({token!r}).read())
    except OSError:
        pass
"""
    ),
    "fspath_runs_code_inside_the_hook": (
        """
import sys
class P:
    def __fspath__(self):
        f = sys._getframe(1)
        print(sorted(f.f_locals))
        return {token!r}
print(open(P()).read())
"""
    ),
    "forged_audit_event_and_getframe": (
        """
import sys
f = sys._getframe(1)
g = f.f_globals
g['_policy'] = None
g.pop('_install_policy', None)
print(open({token!r}).read())
"""
    ),
    "dotdot_path": "print(open('/usr/lib/../../' + {rel_token!r}).read())",
    "proc_self_root_path": "print(open('/proc/self/root/' + {rel_token!r}).read())",
    "proc_self_cwd_path": "print(open('/proc/self/cwd/../../../../../../' + {rel_token!r}).read())",
    "os_open_relative_to_proc_self": (
        """
import os
d = os.open('/proc/self', os.O_RDONLY | os.O_DIRECTORY)
fd = os.open('root/' + {rel_token!r}, os.O_RDONLY, dir_fd=d)
print(os.read(fd, 100))
"""
    ),
    "fifo_creation": "import os\nos.mkfifo('pipe')\nprint('made fifo')",
    "device_creation": "import os, stat\nos.mknod('disk', stat.S_IFBLK | 0o600, os.makedev(8, 0))\nprint('made dev')",
    "fifo_via_rebuilt_posix": (
        """
import _imp, importlib.machinery as m
posix = _imp.create_builtin(m.ModuleSpec('posix', None))
posix.mkfifo('pipe')
print('made fifo')
"""
    ),
    "close_fds_then_hide_violation": (
        """
import os
for fd in range(3, 64):
    try:
        os.close(fd)
    except OSError:
        pass
try:
    print(open({token!r}).read())
except BaseException:
    pass
"""
    ),
    "dup_over_channel_then_hide_violation": (
        """
import os
fd = os.open('/dev/null', os.O_WRONLY)
for target in range(3, 64):
    try:
        os.dup2(fd, target) if target < 48 else os.close(target)
    except OSError:
        pass
try:
    import socket
    socket.create_connection(('127.0.0.1', {port}), timeout=1)
except BaseException:
    pass
"""
    ),
    "fork_setsid_orphan": (
        """
import os, time
pid = os.fork()
if pid == 0:
    os.setsid()
    time.sleep(30)
"""
    ),
    "read_planted_token": "print(open({token!r}).read())",
    "read_parent_environ": "print(open('/proc/{ppid}/environ', 'rb').read())",
    "loopback_connect": (
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
    ),
    "raw_socket_module": "import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')",
    "write_outside": "open({target!r}, 'w').write('pwned')",
    "exec_usr_bin_id": "import os\nos.execv('/usr/bin/id', ['id'])",
    "subprocess_usr_bin_id": "import subprocess\nprint(subprocess.run(['/usr/bin/id'], capture_output=True).stdout)",
    "posix_spawn_id": "import os\nos.posix_spawn('/usr/bin/id', ['id'], {{}})",
    "ctypes_system": "import ctypes\nctypes.CDLL(None).system(b'id > {target}')",
    "ctypes_via_create_dynamic": (
        """
import _imp, importlib.machinery as m, glob, sys
so = glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/_ctypes*.so')[0]
mod = _imp.create_dynamic(m.ModuleSpec('_ctypes', None, origin=so))
print(mod.dlopen(None))
"""
    ),
    "gc_finds_the_hook": "import gc\nprint([o for o in gc.get_objects() if callable(o)][:3])",
    "replace_hooks_and_tracing": "import sys\nsys.addaudithook(lambda *a: None)\nsys.settrace(lambda *a: None)",
    "kill_the_parent": "import os\nos.kill({ppid}, 9)",
    "memory_bomb": "x = bytearray(10**10)",
    "cpu_bomb": "while True:\n    pass",
    "output_bomb": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "file_count_bomb": "for i in range(100000):\n    open('f%d' % i, 'w').close()",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
@pytest.mark.parametrize("mode", MODES)
def test_escape_is_contained(mode, name, world):
    before = set(_descendants(os.getpid()))
    start = time.monotonic()
    res = run_in(mode, ESCAPES[name].format(**world))
    assert time.monotonic() - start < 6
    assert not res.ok, (mode, name, res)
    assert SECRET not in res.stdout + res.stderr
    assert "uid=" not in res.stdout + res.stderr
    assert "connected" not in res.stdout and "made " not in res.stdout
    assert len(res.stdout) <= LIMITS.max_output_bytes + 100
    assert set(_descendants(os.getpid())) <= before  # no orphan survives the run


def test_the_policy_has_no_reachable_state():
    """The audit hook reads no global or builtin and has no closure: its data are immutable defaults."""
    import dis

    from builder import sandbox_child

    code = sandbox_child._policy.__code__
    ops = {ins.opname for ins in dis.get_instructions(code)}
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            ops |= {ins.opname for ins in dis.get_instructions(const)}
    assert not ops & {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "STORE_GLOBAL", "LOAD_CLASSDEREF", "STORE_DEREF"}
    assert not code.co_freevars and not code.co_cellvars


def test_violation_exit_code_alone_counts_as_a_violation():
    res, _ = _run("import os\nos._exit(86)", LIMITS, mode="audit", kernel=False)
    assert not res.ok and res.error.startswith("blocked:")


def test_python_tool_refuses_without_confinement(monkeypatch):
    monkeypatch.setattr(sandbox, "confinement_mode", lambda: None)
    with pytest.raises(SandboxUnavailableError, match="allow_unconfined"):
        python_tool("print(1)", LIMITS)
    with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
        sandbox.require_confinement()
    allowed = SandboxLimits(wall_seconds=3.0, cpu_seconds=1, allow_unconfined=True)
    call = python_tool("print(6 * 7)", allowed)
    assert call.ok and call.output == "42"
    assert sandbox.require_confinement(allow_unconfined=True) == "audit"


def test_confinement_mode_reports_what_the_machine_offers():
    assert sandbox.confinement_mode() == (MODES[0] if MODES[0] != "hook" else None)


def test_sandbox_config_validation():
    from builder.config import SandboxConfig
    from nanoflux.recipe import ConfigError

    SandboxConfig(allow_unconfined=True).validate("sandbox")
    for bad in (
        SandboxConfig(wall_seconds=float("nan")),
        SandboxConfig(wall_seconds=float("inf")),
        SandboxConfig(cpu_seconds=float("nan")),
        SandboxConfig(memory_mb=float("inf")),
    ):
        with pytest.raises(ConfigError):
            bad.validate("sandbox")


def test_stale_folders_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"nanoflux-sandbox-{dead.stdout.strip()}-abc"
    live = tmp_path / f"nanoflux-sandbox-{os.getpid()}-abc"
    for d in (stale, live):
        d.mkdir()
        (d / "main.py").write_text("x")
    assert sandbox.sweep_stale_dirs(str(tmp_path)) == [str(stale)]
    assert live.exists() and not stale.exists()


_DRIVER = """
import sys
sys.path.insert(0, {repo!r})
from builder.sandbox import SandboxLimits, _run
_run("import time\\ntime.sleep(60)", SandboxLimits(wall_seconds=60, cpu_seconds=60), mode={mode!r})
"""


@pytest.mark.parametrize("mode", [m for m in MODES if m != "hook"] + ["audit"])
def test_kill_9_of_the_build_leaves_no_child_and_no_folder(mode, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER.format(repo=str(REPO), mode=mode)], env=env)
    try:
        deadline = time.monotonic() + 10
        kids: list[int] = []
        while time.monotonic() < deadline:
            kids = (
                [
                    p
                    for p in _descendants(driver.pid)
                    if b"The sandbox child" in Path(f"/proc/{p}/cmdline").read_bytes()
                ]
                if _alive(driver.pid)
                else []
            )
            if kids:
                break
            time.sleep(0.05)
        assert kids, "the sandbox child never started"
        every = _descendants(driver.pid)
        time.sleep(0.3)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p) for p in every):
            time.sleep(0.05)
        assert not [p for p in every if _alive(p)]
        # bwrap keeps no host folder at all; the others leave theirs to the sweep every start runs.
        sandbox.sweep_stale_dirs(str(tmp_path))
        assert not list(tmp_path.glob("nanoflux-sandbox-*"))
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
