"""The packaged domains: one folder each (`math/`, `science/`, `medical/`) holding everything a domain brings.

A domain folder holds the role templates (`attacker.txt`, `defender.txt`, `solver.txt` for the Judge's blind solve,
`judge.txt`), the Judge's rubric (`rubric.yaml`) and the reference corpus of its lookup tool (`corpus.jsonl`). A
recipe's `prompts` folder replaces the templates and rubric, its `corpus` file the corpus.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CORPUS_FILE = "corpus.jsonl"


def domain_folder(domain: str) -> Path:
    """The packaged folder of `domain` (it may not exist: callers say what is missing)."""
    return Path(str(resources.files("builder") / "domains" / domain))


def packaged_domains() -> list[str]:
    """Domains with a packaged folder that holds a corpus."""
    root = resources.files("builder") / "domains"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CORPUS_FILE).is_file())
