"""The Judge's code sandbox: containment of hostile programs, and a parent process left intact."""

from __future__ import annotations

import os
import resource
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from builder.sandbox import SandboxLimits, _run, run_python

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox targets Linux")

FAST = SandboxLimits(wall_seconds=2.0, cpu_seconds=1, memory_bytes=256 * 1024**2)


def _process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def _peak_process_growth(fn):
    """Run ``fn()`` while sampling the machine's process count; return (fn's result, peak growth)."""
    before, peak, done = _process_count(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _process_count())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, max(peak[0], _process_count()) - before


@pytest.fixture(autouse=True)
def parent_is_fine_afterwards():
    """Every test: the parent's cwd, rlimits and environment are untouched and the sandbox still works."""
    limits = {
        r: resource.getrlimit(r)
        for r in (
            resource.RLIMIT_AS,
            resource.RLIMIT_CPU,
            resource.RLIMIT_FSIZE,
            resource.RLIMIT_NOFILE,
            resource.RLIMIT_NPROC,
        )
    }

    def environ() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}

    cwd, env = os.getcwd(), environ()
    yield
    assert os.getcwd() == cwd
    assert environ() == env
    assert {r: resource.getrlimit(r) for r in limits} == limits
    after = run_python("print(6 * 7)")
    assert after.ok and after.stdout == "42\n"


@pytest.fixture
def listener():
    """A real listening TCP socket on loopback; the test checks it never got a connection."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def _assert_no_connection(srv: socket.socket) -> None:
    time.sleep(0.05)
    with pytest.raises(BlockingIOError):
        srv.accept()


def test_normal_code_prints_computed_answer():
    code = (
        "import math, fractions\nprint(sum(math.comb(10, k) for k in range(11)))\n"
        "print(fractions.Fraction(1, 3) + fractions.Fraction(1, 6))"
    )
    res = run_python(code)
    assert res.ok and res.error is None
    assert res.stdout == "1024\n1/2\n"
    assert res.stderr == ""
    assert res.duration_s < 5


def test_sandbox_dir_is_private_writable_and_removed_afterwards():
    res = run_python(
        "import os\nopen('note.txt', 'w').write('hi')\nprint(open('note.txt').read())\nprint(os.getcwd())"
    )
    assert res.ok, res.stderr
    text, cwd = res.stdout.splitlines()
    assert text == "hi"
    assert cwd != os.getcwd() and not os.path.exists(cwd)


def test_infinite_loop_hits_cpu_limit_quickly():
    start = time.monotonic()
    res = run_python("while True:\n    pass", limits=FAST)
    assert not res.ok and res.error in ("cpu_limit", "timeout")
    assert time.monotonic() - start < 4


def test_cpu_limit_holds_even_when_sigxcpu_is_ignored():
    res = run_python(
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass",
        limits=SandboxLimits(wall_seconds=4.0, cpu_seconds=1),
    )
    assert not res.ok and res.error == "cpu_limit"


def test_sleeping_code_hits_wall_clock_timeout():
    start = time.monotonic()
    res = run_python("import time\nprint('started')\ntime.sleep(60)", limits=SandboxLimits(wall_seconds=1.0))
    assert not res.ok and res.error == "timeout"
    assert res.stdout == "started\n"  # unbuffered: output before the kill is kept
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("code", ["x = bytearray(10**10)", "x = []\nwhile True:\n    x.append(bytearray(10**6))"])
def test_memory_bomb_reports_memory_limit(code):
    res = run_python(code, limits=FAST)
    assert not res.ok and res.error == "memory_limit"
    assert "MemoryError" in res.stderr


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import subprocess\nwhile True:\n    subprocess.Popen(['sh', '-c', ':(){ :|:& };:'])",
        "import os\nos.system('sh -c \"sleep 30\"')",
        "import os\nos.execv('/bin/sh', ['sh', '-c', 'sleep 30'])",
    ],
)
def test_fork_bomb_and_subprocesses_are_blocked(code):
    res, growth = _peak_process_growth(lambda: run_python(code, limits=FAST))
    assert not res.ok and res.error.startswith("blocked:"), (res.error, res.stderr)
    assert growth <= 10  # the sandbox's own interpreter, plus noise from the rest of the machine


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)",
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
    ],
)
def test_network_calls_are_blocked(listener, code):
    port = listener.getsockname()[1]
    res = run_python(code.format(port=port), limits=FAST)
    assert not res.ok and res.error.startswith("blocked:"), (res.error, res.stderr)
    _assert_no_connection(listener)


def test_write_outside_sandbox_is_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    for code in (
        f"open({str(target)!r}, 'w').write('pwned')",
        f"from pathlib import Path\nPath({str(target)!r}).write_text('pwned')",
        f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'pwned')",
        f"import shutil\nopen('a.txt', 'w').write('pwned')\nshutil.copyfile('a.txt', {str(target)!r})",
    ):
        res = run_python(code)
        assert not res.ok and res.error.startswith("blocked:"), (res.error, res.stderr)
        assert not target.exists()


def test_deleting_outside_sandbox_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    res = run_python(f"import os\nos.remove({str(victim)!r})")
    assert not res.ok and res.error.startswith("blocked:")
    assert victim.read_text() == "precious"


def test_reading_files_outside_sandbox_is_blocked(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("hf_SECRET")
    for code in (f"print(open({str(secret)!r}).read())", f"print(open('/proc/{os.getpid()}/environ').read())"):
        res = run_python(code)
        assert not res.ok and res.error.startswith("blocked:"), (res.error, res.stderr)
        assert "hf_SECRET" not in res.stdout


def test_ctypes_escape_is_blocked(tmp_path):
    target = tmp_path / "ctypes_was_here"
    for code in (
        f"import ctypes\nctypes.CDLL(None).system(b'touch {target}')",
        "_ctypes = __import__('_ctypes')\nprint(_ctypes)",
    ):
        res = run_python(code)
        assert not res.ok and res.error.startswith("blocked:"), (res.error, res.stderr)
    assert not target.exists()


def test_policy_tampering_is_blocked():
    for code in (
        "import sys\nsys.settrace(lambda *a: None)",
        "import gc\ngc.get_objects()",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
        "import os\nos.kill(os.getppid(), 9)",
    ):
        res = run_python(code)
        assert not res.ok and res.error.startswith("blocked:"), (code, res.error)


def test_violation_ends_the_program_so_there_is_nothing_to_catch():
    res = run_python("import os\ntry:\n    os.system('true')\nexcept BaseException as e:\n    print('caught', e)\n")
    assert "caught" not in res.stdout
    assert not res.ok and res.error == "blocked: os.system"


def test_exception_reports_exit_code_and_traceback_tail():
    res = run_python("def f():\n    return 1 / 0\nprint('before')\nf()")
    assert not res.ok and res.error == "exit code 1"
    assert res.stdout == "before\n"
    assert 'File "main.py", line 2, in f' in res.stderr
    assert res.stderr.rstrip().endswith("ZeroDivisionError: division by zero")


def test_syntax_error_reports_exit_code_1():
    res = run_python("def f(:\n    pass")
    assert not res.ok and res.error == "exit code 1"
    assert "SyntaxError" in res.stderr


def test_sys_exit_code_is_reported():
    assert run_python("import sys\nsys.exit(3)").error == "exit code 3"
    assert run_python("import sys\nsys.exit(0)").ok


def test_output_is_truncated_to_the_last_bytes():
    res = run_python("for i in range(20000):\n    print(i)", limits=SandboxLimits(max_output_bytes=100))
    assert res.ok
    assert res.stdout.startswith("[... ") and res.stdout.endswith("19999\n")
    assert len(res.stdout) < 200


def test_concurrent_runs_from_threads_return_their_own_results():
    codes = [f"import math\nprint(math.factorial({n}) % 1000003)" for n in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run_python, codes))
    import math

    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.stdout for r in results] == [f"{math.factorial(n) % 1000003}\n" for n in range(12)]


# Defence in depth: with the audit hook switched off, the kernel layers alone still contain the code.


def test_kernel_layers_alone_stop_fork(tmp_path):
    _, layers = _run("pass", FAST, mode="kernel")
    if "seccomp" not in layers:
        pytest.skip(f"seccomp unavailable here (layers: {sorted(layers)})")
    (res, _), growth = _peak_process_growth(
        lambda: _run("import os\nwhile True:\n    os.fork()", FAST, mode="kernel", audit=False)
    )
    assert not res.ok and res.error == "blocked: forbidden syscall"
    assert growth <= 10


def test_kernel_layers_alone_stop_writes_outside(tmp_path):
    _, layers = _run("pass", FAST, mode="kernel")
    if not any(x.startswith("landlock") for x in layers):
        pytest.skip(f"Landlock unavailable here (layers: {sorted(layers)})")
    target = tmp_path / "escaped.txt"
    res, _ = _run(f"open({str(target)!r}, 'w').write('pwned')", FAST, mode="kernel", audit=False)
    assert not res.ok and "PermissionError" in res.stderr
    assert not target.exists()
    inside, _ = _run("open('ok.txt', 'w').write('x')\nprint(open('ok.txt').read())", FAST, mode="kernel", audit=False)
    assert inside.ok and inside.stdout == "x\n"


def test_kernel_layers_alone_stop_network(listener):
    _, layers = _run("pass", FAST, mode="kernel")
    if not ({"seccomp", "netns"} & layers or any(x.startswith("landlock") and int(x[8:]) >= 4 for x in layers)):
        pytest.skip(f"no kernel network confinement here (layers: {sorted(layers)})")
    port = listener.getsockname()[1]
    res, _ = _run(
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", FAST, mode="kernel", audit=False
    )
    assert not res.ok
    _assert_no_connection(listener)
