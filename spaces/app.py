"""NanoFlux Space: compare the base model with base + a NanoFlux LoRA adapter, explore the dataset's versions, and
see the evaluation results.

Run it:
    python app.py                      # settings from the environment (Space variables) and this folder's README.md
    nanoflux space                     # from a NanoFlux checkout: local dataset, packaged SmolLM2, local adapter

Settings: a Space variable (environment variable) wins over the README front matter, which wins over the default.

| variable | front matter | meaning |
|---|---|---|
| NANOFLUX_DATASET | `datasets[0]` | the NanoFlux dataset repo (org/name); its versions are the `vN` tags |
| NANOFLUX_BASE_MODEL | `models[0]` | the base model: a Hub model id or a folder |
| NANOFLUX_BASE_MODEL_FOLDER | | a local copy of the base model to load instead (the local run's packaged SmolLM2) |
| NANOFLUX_ADAPTERS | `models[1:]` | comma-separated adapters: a folder, a Hub repo (its tags, `main`), repo@revision |
| NANOFLUX_RESULTS | | `results.json` of `nanoflux eval`, or its folder (default: `results/` beside this file) |
| NANOFLUX_MAX_PROMPT_CHARS, NANOFLUX_MAX_PROMPT_TOKENS | | prompt limits (4000 characters, 1024 tokens) |
| NANOFLUX_MAX_NEW_TOKENS | | the most tokens one answer may generate (256) |
| NANOFLUX_CONCURRENCY, NANOFLUX_QUEUE_SIZE | | comparisons running at once (1) and waiting at most (16) |

The page names the base model by its id, never by a local copy's folder.
A private dataset or adapter needs the Space secret HF_TOKEN; huggingface_hub reads it, nothing here shows it.
Model text (questions, answers, rationales) is shown as plain text only, never as markdown or HTML.
A bad input (an empty prompt, a version that is gone) is answered on the page, and logged as one line without a
traceback: it is the user's to fix, not a server fault.

Modules: `settings` (the settings above), `page` (the Blocks: Compare, Explore, Results), this one (the handlers
behind the page, `NanoFluxSpace`), `comparison`, `versions`, `evaluation` (the models, the dataset's versions, the
evaluation results), `tables` and `charts` (how they are shown).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr
from comparison import Comparison, ModelError, adapter_versions
from evaluation import (
    ResultsError,
    benchmark_questions,
    load_results,
    paired_table,
    results_figure,
    results_summary,
    results_table,
)
from huggingface_hub import HfApi
from page import build_demo
from settings import Settings, model_label
from tables import sized
from versions import (
    TEXT_COLUMNS,
    DatasetVersions,
    VersionError,
    diff_summary,
    diff_table,
    diff_versions,
    distributions,
    distributions_figure,
    filter_options,
    filter_rows,
    row_label,
    rows_table,
    scores_table,
    tool_call,
    tools_table,
)

logger = logging.getLogger("nanoflux.space")

_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")
# Row fields too bulky for the row's JSON view (the chat messages repeat the question and the explanation).
_NOT_IN_JSON = ("messages",)


def refused(message: str) -> gr.Error:
    """An error the page shows (a toast) for an input or a setting the user can fix: logged as one line, with no
    server traceback (Gradio prints one for every other exception)."""
    logger.info("Refused: %s", message)
    return gr.Error(message, print_exception=False)


def redact(text: str) -> str:
    """A message safe to show: no Hub token, whatever raised it."""
    token = os.environ.get("HF_TOKEN")
    if token:
        text = text.replace(token, "***")
    return _TOKEN_PATTERN.sub("hf_***", text)


# --- handlers --------------------------------------------------------------------------------------------


class NanoFluxSpace:
    """The Space's state (dataset versions, models, results) and its handlers, plain functions of their inputs."""

    def __init__(self, settings: Settings, api: HfApi | None = None):
        self.settings = settings
        self.api = api or HfApi()
        self.versions = DatasetVersions(settings.dataset, self.api)
        self.base_model_label = model_label(settings.base_model, settings.base_model_folder)
        self.comparison = Comparison(
            settings.base_model_folder or settings.base_model,
            name=self.base_model_label,
            max_prompt_tokens=settings.max_prompt_tokens,
        )
        self.adapter_choices: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.adapter_problems: list[str] = []
        self.benchmarks: list[dict[str, Any]] = []

    # startup: what every dropdown offers, and what is missing

    def refresh(self) -> None:
        """Re-read the dataset's versions, the adapters' versions and the benchmark questions."""
        problems = []
        try:
            self.versions.tags(refresh=True)
        except VersionError as err:
            problems.append(str(err))
        self.adapter_choices, adapter_problems = adapter_versions(self.settings.adapters, self.api)
        if not self.settings.adapters:
            adapter_problems.append(
                "No adapter is configured: Compare shows the base model only. Fix: set NANOFLUX_ADAPTERS"
            )
        self.adapter_problems = [redact(p) for p in adapter_problems]
        problems += adapter_problems
        try:
            self.benchmarks = (
                benchmark_questions(self.settings.results, load_results(self.settings.results))
                if self.settings.results
                else []
            )
        except ResultsError as err:
            self.benchmarks = []
            problems.append(str(err))
        self.problems = [redact(p) for p in problems]

    def version_tags(self) -> list[str]:
        try:
            return list(self.versions.tags())
        except VersionError:
            return []

    def status(self) -> str:
        """The settings in use and anything missing (markdown; no model text, no token)."""
        tags = self.version_tags()
        adapters = ", ".join(f"`{label}`" for label, _ in self.adapter_choices) or "none"
        lines = [
            f"**Dataset** `{self.settings.dataset or '–'}`"
            + (f" ({len(tags)} version{'s' if len(tags) > 1 else ''}: {', '.join(tags)})" if tags else ""),
            f"**Base model** `{self.base_model_label}` · **Adapters** {adapters}",
        ]
        lines += [f"⚠️ {p}" for p in self.problems]
        return "\n\n".join(lines)

    def startup(self) -> tuple[Any, ...]:
        """Page load: status, and the choices of every version, adapter and benchmark-question dropdown."""
        self.refresh()
        tags = self.version_tags()
        latest, previous = (tags[0] if tags else None), (tags[1] if len(tags) > 1 else tags[0] if tags else None)
        return (
            self.status(),
            gr.update(choices=tags, value=latest),
            gr.update(
                choices=self.adapter_choices, value=self.adapter_choices[0][1] if self.adapter_choices else None
            ),
            gr.update(choices=self.benchmark_choices(), value=None),
            gr.update(choices=tags, value=latest),
            gr.update(choices=tags, value=previous),
            gr.update(choices=tags, value=latest),
        )

    def benchmark_choices(self) -> list[tuple[str, str]]:
        return [
            (f"{q['title']} · {q['id']} · {' '.join(q['prompt'].split())[:80]}", f"{q['benchmark']}#{i}")
            for i, q in enumerate(self.benchmarks)
        ]

    # Compare

    def dataset_questions(self, tag: str | None) -> Any:
        """The dataset-question dropdown for version `tag`."""
        if not tag:
            return gr.update(choices=[], value=None)
        rows = self._rows(tag)
        return gr.update(choices=[(row_label(i, row), f"{tag}#{i}") for i, row in enumerate(rows)], value=None)

    def pick_dataset_question(self, choice: str | None) -> tuple[Any, Any]:
        """(prompt, reference) for a dataset question `<tag>#<index>`: the question, its reference answer and
        explanation."""
        if not choice:
            return gr.update(), gr.update()
        tag, _, index = choice.rpartition("#")
        row = self._row(tag, index)
        reference = (
            f"Reference answer ({tag}, {row.get('id')}):"
            f" {row.get('reference_answer')}\n\n{row.get('explanation') or ''}".strip()
        )
        return row.get("question") or "", reference

    def pick_benchmark_question(self, choice: str | None) -> tuple[Any, Any]:
        """(prompt, reference) for a benchmark question: the prompt as the evaluation asked it, and its gold answer."""
        if not choice:
            return gr.update(), gr.update()
        index = int(choice.rpartition("#")[2])
        if not 0 <= index < len(self.benchmarks):
            raise refused("That benchmark question is no longer listed. Reload the page.")
        question = self.benchmarks[index]
        return question["prompt"], f"Gold answer ({question['title']}, {question['id']}): {question['gold']}"

    def compare(self, prompt: str, adapter: str | None, max_new_tokens: float) -> Iterator[tuple[str, str, str]]:
        """Stream (base answer, tuned answer, status) for `prompt`, greedy, at most `max_new_tokens` each."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise refused("Write a prompt, or pick a question from the dataset or a benchmark.")
        if len(prompt) > self.settings.max_prompt_chars:
            raise refused(
                f"The prompt is {len(prompt)} characters; the limit is {self.settings.max_prompt_chars}. Shorten it."
            )
        try:
            tokens = int(max_new_tokens)
        except (TypeError, ValueError):
            raise refused(
                f"max_new_tokens must be a whole number from 1 to {self.settings.max_new_tokens} (got"
                f" {max_new_tokens!r})."
            ) from None
        if not 1 <= tokens <= self.settings.max_new_tokens:
            raise refused(f"max_new_tokens must be from 1 to {self.settings.max_new_tokens} (got {tokens}).")
        specs = {spec for _, spec in self.adapter_choices}
        if adapter and adapter not in specs:
            raise refused(
                f"Adapter version {adapter!r} is not offered by this Space. Pick one of the list (reload the page if"
                " it changed)."
            )
        no_adapter = (
            "(no adapter selected: pick an adapter version)"
            if specs
            else f"(no adapter available: {' '.join(self.adapter_problems) or 'set NANOFLUX_ADAPTERS'})"
        )
        start = time.perf_counter()
        base, tuned = "", None
        yield "", "", "Generating…"
        try:
            for base, tuned in self.comparison.stream(prompt, adapter or None, tokens):
                yield (
                    base,
                    tuned if tuned is not None else no_adapter,
                    f"Generating… {time.perf_counter() - start:.1f} s",
                )
        except ModelError as err:
            raise refused(redact(str(err))) from None
        yield (
            base,
            tuned if tuned is not None else no_adapter,
            f"Done in {time.perf_counter() - start:.1f} s (greedy, at most {tokens} new tokens each).",
        )

    # Explore

    def _rows(self, tag: str) -> list[dict[str, Any]]:
        try:
            return self.versions.rows(tag)
        except VersionError as err:
            raise refused(redact(str(err))) from None

    def _row(self, tag: str, index: str | int) -> dict[str, Any]:
        rows = self._rows(tag)
        try:
            return rows[int(index)]
        except (ValueError, IndexError):
            raise refused(f"Version {tag} has no row #{index}.") from None

    def explore_options(self, tag: str | None) -> tuple[Any, Any]:
        """The round and capability filters for version `tag` (reset to everything)."""
        options = filter_options(self._rows(tag)) if tag else {"rounds": [], "capabilities": []}
        return gr.update(choices=options["rounds"], value=[]), gr.update(choices=options["capabilities"], value=[])

    def explore(
        self,
        tag: str | None,
        rounds: list[int] | None,
        capabilities: list[str] | None,
        complexities: list[int] | None,
        quality_levels: list[str] | None,
        defender: str | None,
    ) -> tuple[str, Any, Any]:
        """(summary, table, row dropdown) for the rows of version `tag` that pass the filters."""
        if not tag:
            return (
                "Pick a dataset version.",
                sized(rows_table([], []), text=TEXT_COLUMNS["rows"]),
                gr.update(choices=[], value=None),
            )
        rows = self._rows(tag)
        levels = [int(str(q).lstrip("L")) for q in quality_levels or []]
        try:
            kept = filter_rows(
                rows,
                rounds=rounds,
                capabilities=capabilities,
                complexities=complexities,
                quality_levels=levels,
                defender=defender or "any",
            )
        except ValueError as err:
            raise refused(str(err)) from None
        failed = sum(rows[i].get("defender_correct") is False for i in kept)
        summary = f"**{len(kept)}** of {len(rows)} rows of {tag}; the Defender failed {failed} of them."
        choices = [(row_label(i, rows[i]), str(i)) for i in kept]
        return (
            summary,
            sized(rows_table(rows, kept), text=TEXT_COLUMNS["rows"]),
            gr.update(choices=choices, value=str(kept[0]) if kept else None),
        )

    def select_row(self, evt: gr.SelectData) -> Any:
        """A click on the table selects that row (its `#` column)."""
        row = evt.row_value or []
        return gr.update(value=str(row[0])) if row else gr.update()

    def row_details(self, tag: str | None, index: str | None) -> tuple[Any, ...]:
        """Question, reference, explanation, Defender answer and reasoning, Judge rationale, rubric scores, tool
        results, the first tool call in full (input, output), and every field of the row (JSON)."""
        if not tag or index in (None, ""):
            return ("",) * 6 + (
                sized(scores_table({})),
                sized(tools_table({}), text=TEXT_COLUMNS["tools"]),
                "",
                "",
                None,
            )
        row = self._row(tag, index)
        defender = {True: "correct", False: "failed"}.get(row.get("defender_correct"), "not judged")
        return (
            row.get("question") or "",
            f"{row.get('reference_answer') or ''}",
            row.get("explanation") or "",
            (
                f"{row.get('defender_answer') or ''} ({defender}; {row.get('defender') or '?'}:"
                f" {row.get('defender_model') or '?'})"
            ),
            row.get("defender_reasoning") or "",
            f"[{row.get('judge_status') or 'not judged'}] {row.get('judge_rationale') or ''}",
            sized(scores_table(row)),
            sized(tools_table(row), text=TEXT_COLUMNS["tools"]),
            *tool_call(row, 1),
            json.loads(
                json.dumps({k: v for k, v in row.items() if k not in _NOT_IN_JSON}, default=str)
            ),  # dates, bytes: as text
        )

    def select_tool_call(self, tag: str | None, index: str | None, evt: gr.SelectData) -> tuple[Any, Any]:
        """A click on the tool table shows that call's input and output in full (its `#` column)."""
        number = (evt.row_value or [None])[0]
        if not tag or index in (None, "") or number is None:
            return gr.update(), gr.update()
        return tool_call(self._row(tag, index), int(number))

    def diff(self, old: str | None, new: str | None) -> tuple[str, Any]:
        """(summary, table) of what changed from version `old` to version `new`."""
        if not old or not new:
            return "Pick two versions to compare.", sized(
                diff_table({"added": [], "removed": [], "changed": []}), text=TEXT_COLUMNS["diff"]
            )
        old_rows, new_rows = self._rows(old), self._rows(new)
        changes = diff_versions(old_rows, new_rows)
        return diff_summary(old, new, old_rows, new_rows, changes), sized(
            diff_table(changes), text=TEXT_COLUMNS["diff"]
        )

    # Results

    def results(self) -> tuple[Any, ...]:
        """Evaluation (summary, chart, scores, paired comparisons) and the dataset's quality/complexity distributions
        (summary, chart, table)."""
        try:
            results = load_results(self.settings.results)
            evaluation = (
                redact(results_summary(results)),
                results_figure(results),
                sized(results_table(results)),
                sized(paired_table(results)),
            )
        except ResultsError as err:
            evaluation = (f"⚠️ {redact(str(err))}", None, None, None)
        try:
            by_version = {tag: self.versions.rows(tag) for tag in self.versions.tags()}
            table = distributions(by_version)
            dataset = (
                (
                    "Reasoning-quality levels (L4 = judge score 3.5-4.49) and judge-rated complexity of every row,"
                    f" per version of `{self.settings.dataset}`."
                ),
                distributions_figure(table),
                sized(table),
            )
        except VersionError as err:
            dataset = (f"⚠️ {redact(str(err))}", None, None)
        return evaluation + dataset


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per Hub or queue request drowns what the Space says
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings.from_env()
    logger.info(
        "Dataset %s, base model %s, adapters %s, results %s",
        settings.dataset,
        settings.base_model,
        settings.adapters,
        settings.results,
    )
    build_demo(NanoFluxSpace(settings)).launch()  # host and port: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT


if __name__ == "__main__":
    main()
