"""The build folder: what `nanoflux build` writes, `nanoflux publish` releases, a sweep cell imitates (so that
`nanoflux publish` releases it) and `nanoflux doctor` checks, every file named once.

Layout, relative to the folder:
- `config.yaml`: the resolved recipe; `summary.json`: the funnel, tokens and runs (`builder/summary.py`);
- `data/train-00000-of-00001.parquet` + `curated.jsonl`: the curated dataset (the parquet's path is also its path in
  a published version);
- `pool/pool.parquet` + `pool.jsonl`: every example of the build, kept or not (what sweeps curate from);
- `contaminated.jsonl`: the rows decontamination removed; `release-contaminated.jsonl`: those of the last release;
- the run-folder contract (`nanoflux.runfolder`, `builder/runfolder.py`): `run.json` (the run's identity), `runs.json`
  (one record per run), `run.lock`, and the journals `calls.jsonl`, `tools.jsonl`, `examples.jsonl`.

A build is finished when it has its config, summary and curated rows: what publishing needs. `read_config` reads a
config written before `target_size` moved into the curation policy as if it had been written today (`migrate_config`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from nanoflux.recipe import to_dict
from nanoflux.runfolder import RUN_FILE, write_atomic

logger = logging.getLogger(__name__)

# Recipe keys that moved, and where to: a recipe that still has one fails (`builder.config`); a saved config is read
# with it moved (`migrate_config`).
MOVED_KEYS = {"target_size": "curation.target_size"}


def migrate_config(config: dict[str, Any]) -> dict[str, Any]:
    """A build's saved config as today's layout: a top-level `target_size` (configs written before it moved into the
    curation policy) becomes `curation.target_size`. Configs already in today's layout come back unchanged."""
    if "target_size" not in config:
        return config
    migrated = {key: value for key, value in config.items() if key != "target_size"}
    curation = dict(migrated.get("curation") or {})
    curation.setdefault("target_size", config["target_size"])  # both set: the curation policy's own wins
    migrated["curation"] = curation
    logger.debug("Read an older build config: target_size %s is now curation.target_size", config["target_size"])
    return migrated


@dataclass(frozen=True)
class BuildFolder:
    """A build's output folder (a sweep cell's folder too): its files' names, whether it is finished, and its parts
    read and written (state files atomically)."""

    path: Path

    CONFIG: ClassVar[str] = "config.yaml"
    SUMMARY: ClassVar[str] = "summary.json"
    DATA: ClassVar[str] = "data/train-00000-of-00001.parquet"
    """The curated rows as parquet: the same path in the folder and in a published version."""
    CURATED: ClassVar[str] = "curated.jsonl"
    POOL_DATA: ClassVar[str] = "pool/pool.parquet"
    POOL: ClassVar[str] = "pool.jsonl"
    CONTAMINATED: ClassVar[str] = "contaminated.jsonl"
    RELEASE_CONTAMINATED: ClassVar[str] = "release-contaminated.jsonl"
    RUN: ClassVar[str] = RUN_FILE
    RUNS: ClassVar[str] = "runs.json"
    CALLS: ClassVar[str] = "calls.jsonl"
    TOOLS: ClassVar[str] = "tools.jsonl"
    EXAMPLES: ClassVar[str] = "examples.jsonl"
    JOURNALS: ClassVar[tuple[str, ...]] = (CALLS, TOOLS, EXAMPLES)
    FINISHED: ClassVar[tuple[str, ...]] = (CONFIG, SUMMARY, CURATED)
    """What a finished build has: what `nanoflux publish` reads."""
    OUTPUTS: ClassVar[tuple[str, ...]] = (RUN, CALLS, EXAMPLES, TOOLS, CONFIG, SUMMARY, CURATED, POOL, CONTAMINATED)
    """The files a fresh build (`--fresh`) discards, besides the folders `OUTPUT_DIRS`."""
    OUTPUT_DIRS: ClassVar[tuple[str, ...]] = ("data", "pool")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        """The path of one of the folder's files (a name above, e.g. `BuildFolder.DATA`)."""
        return self.path / name

    # --- finished? ---------------------------------------------------------------------------------------

    def missing(self, names: tuple[str, ...] = FINISHED) -> list[str]:
        """Which of `names` (default: what a finished build has) the folder lacks."""
        return [name for name in names if not self.file(name).exists()]

    @property
    def finished(self) -> bool:
        return not self.missing()

    # --- config and summary ------------------------------------------------------------------------------

    def read_config(self) -> dict[str, Any]:
        """The build's resolved recipe, in today's layout (an older config is migrated: `migrate_config`)."""
        return migrate_config(yaml.safe_load(self.file(self.CONFIG).read_text()))

    def write_config(self, config: Any) -> None:
        """Save the resolved recipe (a BuildConfig or its dict), in field order."""
        data = to_dict(config) if is_dataclass(config) else config
        write_atomic(self.file(self.CONFIG), yaml.safe_dump(data, sort_keys=False).encode())

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.file(self.SUMMARY).read_text())

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.file(self.SUMMARY), json.dumps(summary, indent=2).encode())

    # --- datasets ----------------------------------------------------------------------------------------

    def read_curated(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.file(self.CURATED).read_text().splitlines() if line.strip()]

    def write_curated(self, rows: list[dict[str, Any]]) -> Any:
        """The curated rows as parquet (`DATA`) and JSON Lines (`CURATED`); returns the Dataset."""
        from builder.dataset import write_rows

        return write_rows(rows, self.file(self.DATA), self.file(self.CURATED))

    def read_pool(self) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        return pq.read_table(self.file(self.POOL_DATA)).to_pylist()

    def write_pool(self, rows: list[dict[str, Any]]) -> Any:
        """Every row of the build as parquet (`POOL_DATA`) and JSON Lines (`POOL`); returns the Dataset."""
        from builder.dataset import write_rows

        return write_rows(rows, self.file(self.POOL_DATA), self.file(self.POOL))

    def write_contamination(self, contaminated: list[dict[str, Any]], *, release: bool = False) -> Path:
        """The contamination report (`CONTAMINATED`; a release's: `RELEASE_CONTAMINATED`); returns its path."""
        from builder.decontamination import write_report

        return write_report(contaminated, self.file(self.RELEASE_CONTAMINATED if release else self.CONTAMINATED))

    # --- a fresh start -----------------------------------------------------------------------------------

    def discard_outputs(self) -> None:
        """Remove what a build wrote (`OUTPUTS`, `OUTPUT_DIRS`); the lock and other files stay."""
        for name in self.OUTPUTS:
            self.file(name).unlink(missing_ok=True)
        for name in self.OUTPUT_DIRS:
            for path in sorted(self.file(name).glob("**/*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
