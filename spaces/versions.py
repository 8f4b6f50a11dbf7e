"""Dataset versions: the `vN` tags of a NanoFlux dataset repo, their rows, the Explore filters, and what changed
between two versions.

A version is read at the commit its tag points to, by downloading the split's parquet files (`data/train-*.parquet`,
the layout `nanoflux publish` writes) with `huggingface_hub`; that works against the Hub and against any server
speaking its API (`HF_ENDPOINT`). Rows are cached per commit, which never changes.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from typing import Any

import pandas as pd
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

logger = logging.getLogger(__name__)

VERSION_TAG = re.compile(r"^v(\d+)$")
LEVELS = (1, 2, 3, 4, 5)
DEFENDER_CHOICES = ("any", "failed", "correct")
TABLE_COLUMNS = ["#", "version", "id", "round", "capability", "complexity", "quality", "defender", "judge", "question"]
TOOL_COLUMNS = ["#", "tool", "ok", "input", "output", "error"]
DIFF_COLUMNS = ["change", "id", "first in", "capability", "quality", "defender", "fields", "question"]
# Free-text columns: a wide column where they wrap (the narrow ones are sized to their values; see tables.py).
TEXT_COLUMNS: dict[str, dict[str, float]] = {
    "rows": {"question": 1},
    "tools": {"input": 2, "output": 3, "error": 1},
    "diff": {"fields": 1, "question": 2},
}
# Fields that say nothing about the example itself when two versions are compared.
_NOT_COMPARED = {"version"}


class VersionError(RuntimeError):
    """A dataset or version that cannot be read; the message says why and what to do."""


class DatasetVersions:
    """The versions of one dataset repo, read through `api` (by default the Hub that HF_ENDPOINT names)."""

    def __init__(self, repo_id: str | None, api: HfApi | None = None, *, max_versions: int = 20):
        self.repo_id = repo_id
        self.api = api or HfApi()
        self.max_versions = max_versions
        self._tags: dict[str, str] | None = None
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def tags(self, *, refresh: bool = False) -> dict[str, str]:
        """{tag: commit}, newest version first (at most `max_versions`)."""
        if self.repo_id is None:
            raise VersionError(
                "No dataset is configured. Fix: set the NANOFLUX_DATASET variable (org/name) or list it under"
                " `datasets:` in the Space's README"
            )
        if self._tags is None or refresh:
            try:
                refs = self.api.list_repo_refs(self.repo_id, repo_type="dataset")
            except RepositoryNotFoundError:
                raise VersionError(
                    f"Dataset {self.repo_id} was not found on {self.api.endpoint}. Fix: check NANOFLUX_DATASET (and"
                    " the Space's HF_TOKEN secret for a private repo)"
                ) from None
            except (HfHubHTTPError, OSError, OfflineModeIsEnabled) as err:
                raise VersionError(
                    f"Dataset {self.repo_id}: could not list its versions ({type(err).__name__}). Fix: try again, or"
                    " check NANOFLUX_DATASET"
                ) from None
            numbered = sorted(
                ((int(m.group(1)), t) for t in refs.tags if (m := VERSION_TAG.match(t.name))), key=lambda nt: -nt[0]
            )
            self._tags = {tag.name: tag.target_commit for _, tag in numbered[: self.max_versions]}
        if not self._tags:
            raise VersionError(
                f"Dataset {self.repo_id} has no version yet (no v1, v2, ... tag). Fix: publish one with `nanoflux"
                " publish`"
            )
        return self._tags

    def rows(self, tag: str) -> list[dict[str, Any]]:
        """Every row of version `tag`, in the order of the dataset."""
        tags = self.tags()
        if tag not in tags:
            tags = self.tags(refresh=True)
        if tag not in tags:
            raise VersionError(
                f"Dataset {self.repo_id} has no version {tag!r} (has {', '.join(tags)}). Fix: pick one of those"
            )
        commit = tags[tag]
        with self._lock:
            if commit not in self._rows:
                self._rows[commit] = self._download(commit, tag)
            return self._rows[commit]

    def _download(self, commit: str, tag: str) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        try:
            files = self.api.list_repo_files(self.repo_id, repo_type="dataset", revision=commit)
            parquet = sorted(f for f in files if f.startswith("data/") and f.endswith(".parquet"))
            train = [f for f in parquet if f.split("/")[-1].startswith("train")] or parquet
            if not train:
                raise VersionError(
                    f"Dataset {self.repo_id} {tag} has no data/*.parquet file. Fix: publish it with `nanoflux publish`"
                )
            rows: list[dict[str, Any]] = []
            for name in train:
                path = self.api.hf_hub_download(self.repo_id, name, repo_type="dataset", revision=commit)
                rows += pq.read_table(path).to_pylist()
        except (HfHubHTTPError, OSError, OfflineModeIsEnabled) as err:
            raise VersionError(
                f"Dataset {self.repo_id} {tag}: could not download its data ({type(err).__name__}). Fix: try again"
            ) from None
        logger.info("Loaded %s %s (%s): %d rows", self.repo_id, tag, commit[:12], len(rows))
        return rows


# --- Explore ---------------------------------------------------------------------------------------------


def filter_options(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The values the filters offer for these rows: rounds and capabilities present."""
    return {
        "rounds": sorted({r["round"] for r in rows if r.get("round") is not None}),
        "capabilities": sorted({r["capability"] for r in rows if r.get("capability")}),
    }


def filter_rows(
    rows: list[dict[str, Any]],
    *,
    rounds: list[int] | None = None,
    capabilities: list[str] | None = None,
    complexities: list[int] | None = None,
    quality_levels: list[int] | None = None,
    defender: str = "any",
) -> list[int]:
    """Indices of the rows that pass every filter; an empty or None filter lets everything through."""
    if defender not in DEFENDER_CHOICES:
        raise ValueError(f"defender: unknown filter (got {defender!r}). Fix: use one of {', '.join(DEFENDER_CHOICES)}")
    rounds_set = {int(r) for r in rounds or []}
    kept = []
    for index, row in enumerate(rows):
        if rounds_set and row.get("round") not in rounds_set:
            continue
        if capabilities and row.get("capability") not in capabilities:
            continue
        if complexities and row.get("judge_complexity") not in {int(c) for c in complexities}:
            continue
        if quality_levels and row.get("quality_level") not in {int(q) for q in quality_levels}:
            continue
        if defender != "any" and row.get("defender_correct") is not (defender == "correct"):
            continue
        kept.append(index)
    return kept


def _defender(row: dict[str, Any]) -> str:
    return {True: "correct", False: "failed"}.get(row.get("defender_correct"), "–")


def _level(value: Any) -> str:
    return f"L{value}" if value is not None else "–"


def _short(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rows_table(rows: list[dict[str, Any]], indices: list[int]) -> pd.DataFrame:
    """One table line per row: position, version, id, round, capability, judge complexity, quality level, the
    Defender's outcome, the Judge's status and the question (shortened)."""
    data = [
        [
            i,
            rows[i].get("version") or "",
            rows[i].get("id"),
            rows[i].get("round"),
            rows[i].get("capability"),
            rows[i].get("judge_complexity"),
            _level(rows[i].get("quality_level")),
            _defender(rows[i]),
            rows[i].get("judge_status") or "–",
            _short(rows[i].get("question"), 120),
        ]
        for i in indices
    ]
    return pd.DataFrame(data, columns=TABLE_COLUMNS)


def row_label(index: int, row: dict[str, Any], limit: int = 90) -> str:
    return f"#{index} · {row.get('id')} · {_short(row.get('question'), limit)}"


def scores_table(row: dict[str, Any]) -> pd.DataFrame:
    """The Judge's rubric scores, then their mean and level."""
    data = [[s.get("name"), s.get("score")] for s in row.get("judge_scores") or []]
    if row.get("reasoning_quality") is not None:
        data.append(["reasoning quality (mean)", round(float(row["reasoning_quality"]), 2)])
    data.append(["quality level", _level(row.get("quality_level"))])
    data.append(["complexity (judge)", row.get("judge_complexity")])
    return pd.DataFrame(data, columns=["criterion", "score"])


def tools_table(row: dict[str, Any]) -> pd.DataFrame:
    """The Judge's tool uses: number (from 1), tool, ok, input, output, error (in full; the table cuts long cells and
    `tool_call` gives one call's full text)."""
    data = [
        [n, c.get("tool"), c.get("ok"), c.get("input") or "", c.get("output") or "", c.get("error") or ""]
        for n, c in enumerate(row.get("tool_calls") or [], start=1)
    ]
    return pd.DataFrame(data, columns=TOOL_COLUMNS)


def tool_call(row: dict[str, Any], number: int) -> tuple[str, str]:
    """(input, output) of the row's tool use `number` (from 1) in full, the tool and its outcome on top, an error
    after the output; ("", "") when there is no such call."""
    calls = row.get("tool_calls") or []
    if not 1 <= number <= len(calls):
        return "", ""
    call = calls[number - 1]
    outcome = {True: "ok", False: "failed"}.get(call.get("ok"), "?")
    output = str(call.get("output") or "")
    if call.get("error"):
        output = f"{output}\n\nError: {call['error']}".strip()
    return f"Call {number} of {len(calls)}: {call.get('tool') or '?'} ({outcome})\n\n{call.get('input') or ''}", output


# --- changes between versions ----------------------------------------------------------------------------


def _question(row: dict[str, Any]) -> str:
    return " ".join(str(row.get("question") or "").split())


def match_key(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    """What two versions' rows are matched on: "id" when the ids can be trusted, else "question".

    Ids are content ids (a hash of the question and the build), unique across the versions of a repo, so one id is
    one example in every version. Rows of older builds carry ids that restarted in every build (`r<round>-a<attack>`)
    or none at all; those are matched by their question text (whitespace-normalised). The ids are trusted only when
    every row of both versions has one, no id repeats within a version, and an id present in both versions names
    the same question in both; anything else falls back to the question text for the whole comparison."""
    ids: dict[str, str] = {}
    for rows in (old, new):
        seen = set()
        for row in rows:
            id_, question = row.get("id"), _question(row)
            if not id_ or id_ in seen or ids.setdefault(id_, question) != question:
                return "question"
            seen.add(id_)
    return "id"


def diff_versions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, Any]:
    """What changed from `old` to `new`: rows added, removed and changed (with the changed fields), matched on their
    `id` (or their question text, see `match_key`), and the columns only one of them has. A changed row is one whose
    value differs in a column both versions have: a column added by a newer build changes no row by itself, and
    neither does an id that cannot be trusted."""
    by = match_key(old, new)
    key = (lambda r: str(r["id"])) if by == "id" else _question
    old_by_key, new_by_key = {key(r): r for r in old}, {key(r): r for r in new}
    old_columns, new_columns = {c for r in old for c in r}, {c for r in new for c in r}
    compared = (old_columns & new_columns) - _NOT_COMPARED - ({"id"} if by == "question" else set())
    added = [r for k, r in new_by_key.items() if k not in old_by_key]
    removed = [r for k, r in old_by_key.items() if k not in new_by_key]
    changed = []
    for k, row in new_by_key.items():
        before = old_by_key.get(k)
        if before is not None:
            fields = sorted(f for f in compared if before.get(f) != row.get(f))
            if fields:
                changed.append((before, row, fields))
    return {
        "added": added,
        "removed": removed,
        "changed": changed,
        "unchanged": len(new_by_key) - len(added) - len(changed),
        "matched_by": by,
        "columns_added": sorted(new_columns - old_columns),
        "columns_removed": sorted(old_columns - new_columns),
    }


def diff_table(diff: dict[str, Any]) -> pd.DataFrame:
    """One line per added, removed or changed row."""

    def line(change: str, row: dict[str, Any], fields: str = "") -> list[Any]:
        return [
            change,
            row.get("id"),
            row.get("version") or "",
            row.get("capability"),
            _level(row.get("quality_level")),
            _defender(row),
            fields,
            _short(row.get("question")),
        ]

    data = [line("added", r) for r in diff["added"]] + [line("removed", r) for r in diff["removed"]]
    data += [line("changed", new, ", ".join(fields)) for _, new, fields in diff["changed"]]
    return pd.DataFrame(data, columns=DIFF_COLUMNS)


def diff_summary(
    old_tag: str, new_tag: str, old: list[dict[str, Any]], new: list[dict[str, Any]], diff: dict[str, Any]
) -> str:
    """A short markdown summary: sizes, counts of changes, and the Defender's failure rate in each version."""

    def failed(rows: list[dict[str, Any]]) -> str:
        judged = [r for r in rows if r.get("defender_correct") is not None]
        return f"{100 * sum(not r['defender_correct'] for r in judged) / len(judged):.0f}%" if judged else "–"

    return (
        f"**{old_tag} → {new_tag}**: {len(old)} → {len(new)} rows; **{len(diff['added'])} added**, "
        f"{len(diff['removed'])} removed, {len(diff['changed'])} changed, {diff['unchanged']} unchanged. "
        f"Defender failed {failed(old)} of {old_tag} and {failed(new)} of {new_tag}. "
        + (
            "Rows matched by id."
            if diff.get("matched_by", "id") == "id"
            else "Rows matched by question text (these versions' ids are missing or not unique)."
        )
        + (f" Columns new in {new_tag}: {', '.join(diff['columns_added'])}." if diff.get("columns_added") else "")
        + (
            f" Columns gone from {new_tag}: {', '.join(diff['columns_removed'])}."
            if diff.get("columns_removed")
            else ""
        )
    )


# --- distributions ---------------------------------------------------------------------------------------


def distributions(by_version: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """Counts of quality levels (L1-L5) and judge complexity (1-5) per version: one line per version."""
    data = []
    for tag, rows in by_version.items():
        quality, complexity = (
            Counter(r.get("quality_level") for r in rows),
            Counter(r.get("judge_complexity") for r in rows),
        )
        data.append(
            [
                tag,
                len(rows),
                *(quality.get(level, 0) for level in LEVELS),
                *(complexity.get(level, 0) for level in LEVELS),
            ]
        )
    columns = ["version", "rows", *(f"L{level}" for level in LEVELS), *(f"complexity {level}" for level in LEVELS)]
    return pd.DataFrame(data, columns=columns)


def distributions_figure(table: pd.DataFrame) -> Any:
    """Two grouped bar charts, quality level and complexity, one labelled bar per version (a zero count shows as a
    stub labelled 0)."""
    from charts import floor_below_zero, labelled_bars
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(figure)
    versions = list(table["version"])
    for position, (prefix, title) in enumerate(
        (("L", "reasoning-quality level"), ("complexity ", "complexity (judge)")), start=1
    ):
        axes = figure.add_subplot(1, 2, position)
        width = 0.8 / max(1, len(versions))
        for j, tag in enumerate(reversed(versions)):  # oldest first
            counts = table.loc[table["version"] == tag, [f"{prefix}{level}" for level in LEVELS]].iloc[0].tolist()
            xs = [i + (j - (len(versions) - 1) / 2) * width for i in range(len(LEVELS))]
            labelled_bars(axes, xs, counts, width, fmt=lambda v: f"{v:.0f}", label=tag, color=f"C{j}")
        axes.set_xticks(range(len(LEVELS)), [f"{prefix.strip() if prefix == 'L' else ''}{level}" for level in LEVELS])
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        floor_below_zero(axes)
        axes.set_title(title)
        axes.set_ylabel("rows")
        if versions:
            axes.legend(fontsize="small", loc="upper left")
    figure.tight_layout()
    return figure
