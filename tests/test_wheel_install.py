"""A non-editable install works without the checkout: `pip install .` into a fresh virtual environment, then, from a
folder that holds only the recipes and the benchmark samples, a build on the embedded default publishes to a local
repository folder. Catches what an editable install hides: package data (prompts, corpora, the card template, the
PubMedQA ids) left out of the wheel, or code that reads files next to the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from localhub import RepoStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_install_builds_and_publishes_away_from_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies come from this environment (a path entry, not its .pth files: the editable install of the
    # checkout stays out); NanoFlux itself only from the wheel.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "build", "*.egg-info", "__pycache__", "tests"),
    )
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    shutil.rmtree(source)

    work = tmp_path / "work"
    for folder in ("configs", "samples"):
        shutil.copytree(ROOT / folder, work / folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")} | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    located = subprocess.run(
        [python, "-c", "import builder, nanoflux; print(builder.__file__, nanoflux.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    )
    assert str(ROOT) not in located.stdout and str(site) in located.stdout  # the wheel's copy, not the checkout's

    build = [
        str(venv / "bin" / "nanoflux"),
        "build",
        "--config",
        "configs/local.yaml",
        "--rounds",
        "1",
        "--attacks_per_round",
        "2",
        "--curation.require_valid",
        "false",
        "--push_to_hub",
        "local/wheel-check",
        "--hub_dir",
        "hub",
    ]
    result = subprocess.run(build, capture_output=True, text=True, cwd=work, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    store = RepoStore(work / "hub")
    v1 = store.resolve("dataset", "local/wheel-check", "v1")
    card = store.read_file("dataset", "local/wheel-check", v1, "README.md").decode()
    assert "local/wheel-check" in card and str(ROOT) not in card
