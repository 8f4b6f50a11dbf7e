"""The README's local loop is runs/local.sh, line for line, and CI runs that script: the commands a reader copies are
the commands that were run. Commands that need real infrastructure (endpoints, the Hub, Jobs, a GPU) are not run here;
the README marks them as such."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localhub import RepoStore

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "runs" / "local.sh"
# Long-running or separately tested commands in the quickstart's block: the Space (tests/test_space.py drives it in a
# browser) and the benchmarks (tests/test_benchmarks.py runs their smoke version).
NOT_IN_SCRIPT = (".venv/bin/nanoflux space", "make bench")


def shell_commands(text: str) -> list[str]:
    """Commands of a bash text: continuation lines joined, comments and blank lines dropped, spaces normalised."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(" ".join(line.split()))
    return commands


def readme_loop() -> list[str]:
    """The quickstart's "rest of the loop" block."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("The rest of the loop", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return shell_commands(block)


def test_the_readme_loop_is_the_script_verbatim():
    loop = [command for command in readme_loop() if not command.startswith(NOT_IN_SCRIPT)]
    script = [c for c in shell_commands(SCRIPT.read_text()) if c.startswith(".venv/bin/nanoflux")]
    assert loop, "the README's quickstart lost its loop block"
    assert script == loop


def test_the_quickstart_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    for command in shell_commands(quick) + [c for c in readme_loop() if c.startswith("make ")]:
        target = command.split()[1]
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), (
            f"README runs `make {target}`, the Makefile has no such target"
        )


@pytest.mark.slow
def test_runs_local_sh_runs_the_whole_loop(tmp_path):
    """build -> publish -> train -> eval -> sweep on the embedded default, in a copy of the recipes and fixtures."""
    for folder in ("configs", "runs", "samples"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run(
        ["bash", "runs/local.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert RepoStore(tmp_path / "outputs" / "hub").resolve("dataset", "local/nanoflux-medical", "v1")
    assert (tmp_path / "outputs" / "adapter-local" / "adapter_config.json").is_file()
    assert list((tmp_path / "outputs").rglob("results.json")), "the evaluation wrote no results"
    assert list((tmp_path / "outputs" / "sweeps" / "local").rglob("*.md")), "the sweep wrote no report"
    # No traceback and no third-party progress bar on the console.
    console = result.stdout + result.stderr
    assert "Traceback" not in console
    assert "Batches:" not in console and "Creating parquet" not in console
