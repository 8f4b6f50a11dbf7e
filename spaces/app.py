"""NanoFlux Space: compare the base model with base + a NanoFlux LoRA adapter, explore the dataset's versions, and
see the evaluation results.

Run it:
    python app.py                      # settings from the environment (Space variables) and this folder's README.md
    nanoflux space                     # from a NanoFlux checkout: local dataset folder, packaged SmolLM2, local adapter

Settings: a Space variable (environment variable) wins over the README front matter, which wins over the default.

| variable | front matter | meaning |
|---|---|---|
| NANOFLUX_DATASET | `datasets[0]` | the NanoFlux dataset repo (org/name); its versions are the `vN` tags |
| NANOFLUX_BASE_MODEL | `models[0]` | the base model: a Hub model id or a folder |
| NANOFLUX_BASE_MODEL_FOLDER | | a local copy of the base model to load instead (the local run's packaged SmolLM2); the page names the id |
| NANOFLUX_ADAPTERS | `models[1:]` | comma-separated LoRA adapters: a folder, a Hub repo (its tags and `main`), or repo@revision |
| NANOFLUX_RESULTS | | `results.json` of `nanoflux eval`, or its folder (default: `results/` beside this file) |
| NANOFLUX_MAX_PROMPT_CHARS, NANOFLUX_MAX_PROMPT_TOKENS | | prompt limits (4000 characters, 1024 tokens) |
| NANOFLUX_MAX_NEW_TOKENS | | the most tokens one answer may generate (256) |
| NANOFLUX_CONCURRENCY, NANOFLUX_QUEUE_SIZE | | comparisons running at once (1) and waiting at most (16) |

A private dataset or adapter needs the Space secret HF_TOKEN; huggingface_hub reads it, nothing here shows it.
Model text (questions, answers, rationales) is shown as plain text only, never as markdown or HTML.
A bad input (an empty prompt, a version that is gone) is answered on the page, and logged as one line without a
traceback: it is the user's to fix, not a server fault.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
from tables import data_table, sized
from versions import (
    DEFENDER_CHOICES,
    LEVELS,
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

APP_DIR = Path(__file__).resolve().parent
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")
# What the local run's converted packaged model carries (builder/embedded.py): the Hub id it was made from.
_PACKAGED_MARKER = "nanoflux_embedded.json"
# Row fields too bulky for the row's JSON view (the chat messages repeat the question and the explanation).
_NOT_IN_JSON = ("messages",)


class SettingsError(ValueError):
    """A Space setting with a bad value; the message names the variable, the value and the fix."""


# --- settings --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What the Space shows and its limits (see the module docstring for the variables)."""

    dataset: str | None = None
    base_model: str = DEFAULT_BASE_MODEL
    base_model_folder: str | None = None
    adapters: list[str] = field(default_factory=list)
    results: str | None = None
    max_prompt_chars: int = 4000
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 256
    default_new_tokens: int = 64
    concurrency: int = 1
    queue_size: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, readme: Path | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        front = _front_matter(readme or APP_DIR / "README.md")
        models = [str(m) for m in front.get("models") or []]
        datasets = [str(d) for d in front.get("datasets") or []]
        adapters = environ.get("NANOFLUX_ADAPTERS")
        default_results = APP_DIR / "results" / "results.json"
        settings = cls(
            dataset=environ.get("NANOFLUX_DATASET") or (datasets[0] if datasets else None),
            base_model=environ.get("NANOFLUX_BASE_MODEL") or (models[0] if models else DEFAULT_BASE_MODEL),
            base_model_folder=environ.get("NANOFLUX_BASE_MODEL_FOLDER") or None,
            adapters=[a.strip() for a in adapters.split(",") if a.strip()] if adapters is not None else models[1:],
            results=environ.get("NANOFLUX_RESULTS") or (str(default_results) if default_results.is_file() else None),
            max_prompt_chars=_int(environ, "NANOFLUX_MAX_PROMPT_CHARS", 4000, 1, 100_000),
            max_prompt_tokens=_int(environ, "NANOFLUX_MAX_PROMPT_TOKENS", 1024, 8, 32_768),
            max_new_tokens=_int(environ, "NANOFLUX_MAX_NEW_TOKENS", 256, 1, 4096),
            concurrency=_int(environ, "NANOFLUX_CONCURRENCY", 1, 1, 64),
            queue_size=_int(environ, "NANOFLUX_QUEUE_SIZE", 16, 1, 1000),
        )
        settings.default_new_tokens = min(settings.default_new_tokens, settings.max_new_tokens)
        return settings


def _front_matter(readme: Path) -> dict[str, Any]:
    from huggingface_hub.repocard import metadata_load

    return (metadata_load(readme) or {}) if readme.is_file() else {}


def _int(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(
            f"{name}: not a whole number (got {raw!r}). Fix: set it to a number from {low} to {high}"
        ) from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: out of range (got {value}). Fix: set it to a number from {low} to {high}")
    return value


def model_label(model: str, folder: str | None = None) -> str:
    """The base model as the page names it: its Hub id, never a cache path. A local copy (`folder`) or a model
    folder that is a converted packaged model (its marker names the id) reads `<id> (packaged)`; another local copy
    `<id> (local copy)`; a plain folder its name."""
    for candidate in (folder, model):
        if candidate and (Path(candidate) / _PACKAGED_MARKER).is_file():
            try:
                model_id = json.loads((Path(candidate) / _PACKAGED_MARKER).read_text(encoding="utf-8")).get("model_id")
            except (OSError, ValueError):
                model_id = None
            if candidate == folder or model_id:
                return f"{model_id or model} (packaged)"
    if folder:
        return f"{model} (local copy)"
    if Path(model).is_dir():
        return f"{Path(model).name} (local folder)"
    return model


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
        """(prompt, reference) for a dataset question `<tag>#<index>`: the question, its reference answer and explanation."""
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


# --- the page --------------------------------------------------------------------------------------------

_NO_RESULTS: dict[str, Any] = {
    "benchmarks": [],
    "variants": [],
    "results": {},
}  # the results tables' columns before the page load


def build_demo(space: NanoFluxSpace) -> gr.Blocks:
    """The Blocks app with its queue configured; `launch()` it (nothing is launched here)."""
    settings = space.settings
    space.refresh()  # initial choices, so that API clients (which run no page load) can pass them
    tags = space.version_tags()
    with gr.Blocks(title="NanoFlux") as demo:
        gr.Markdown(
            "# NanoFlux\nAdversarial Attacker/Defender datasets with a tool-augmented Judge, distilled into a LoRA"
            " adapter."
        )
        status = gr.Markdown(space.status(), elem_id="status")

        with gr.Tab("Compare"):
            with gr.Row():
                question_version = gr.Dropdown(tags, value=tags[0] if tags else None, label="Dataset version", scale=1)
                dataset_question = gr.Dropdown([], label="Question from the dataset", scale=3)
                benchmark_question = gr.Dropdown(
                    space.benchmark_choices(), value=None, label="Question from a benchmark", scale=3
                )
            prompt = gr.Textbox(
                label="Prompt",
                lines=4,
                max_length=settings.max_prompt_chars,
                elem_id="prompt",
                placeholder="Ask anything, or pick a question above.",
            )
            with gr.Row():
                adapter = gr.Dropdown(
                    space.adapter_choices,
                    value=space.adapter_choices[0][1] if space.adapter_choices else None,
                    label="Adapter version",
                    scale=3,
                )
                new_tokens = gr.Slider(
                    1,
                    settings.max_new_tokens,
                    value=settings.default_new_tokens,
                    step=1,
                    label="Max new tokens",
                    scale=2,
                )
                run = gr.Button("Compare", variant="primary", elem_id="compare", scale=1)
            with gr.Row(equal_height=True):
                base_answer = gr.Textbox(label="Base model", lines=10, interactive=False, elem_id="base-answer")
                tuned_answer = gr.Textbox(
                    label="Base + NanoFlux adapter", lines=10, interactive=False, elem_id="tuned-answer"
                )
            reference = gr.Textbox(
                label="Reference (dataset or benchmark questions)", lines=3, interactive=False, elem_id="reference"
            )
            compare_status = gr.Markdown("", elem_id="compare-status")

        with gr.Tab("Explore"):
            with gr.Row():
                version = gr.Dropdown(tags, value=tags[0] if tags else None, label="Dataset version", scale=1)
                rounds = gr.Dropdown([], multiselect=True, label="Round", scale=1)
                capabilities = gr.Dropdown([], multiselect=True, label="Capability", scale=2)
            with gr.Row():
                complexities = gr.CheckboxGroup(list(LEVELS), label="Complexity (judge)")
                quality_levels = gr.CheckboxGroup([f"L{level}" for level in LEVELS], label="Reasoning-quality level")
                defender = gr.Radio(list(DEFENDER_CHOICES), value="any", label="Defender")
            summary = gr.Markdown()
            table = data_table(
                rows_table([], []),
                text=TEXT_COLUMNS["rows"],
                max_height=420,
                label="Rows (click one to read it below)",
                elem_id="rows",
            )
            row = gr.Dropdown([], label="Row")
            with gr.Row():
                question = gr.Textbox(label="Question", lines=5, max_lines=20, interactive=False)
                explanation = gr.Textbox(
                    label="Explanation (annotated reasoning)", lines=5, max_lines=20, interactive=False
                )
            with gr.Row():
                reference_answer = gr.Textbox(label="Reference answer", interactive=False)
                defender_answer = gr.Textbox(label="Defender answer", interactive=False)
            with gr.Row():
                scores = data_table(scores_table({}), label="Judge scores", scale=1, elem_id="scores")
                with gr.Column(scale=2):
                    defender_reasoning = gr.Textbox(
                        label="Defender reasoning", lines=3, max_lines=12, interactive=False
                    )
                    rationale = gr.Textbox(label="Judge rationale", lines=3, max_lines=12, interactive=False)
            tools = data_table(
                tools_table({}),
                text=TEXT_COLUMNS["tools"],
                max_height=320,
                label="Judge tool calls (click one to read it in full)",
                elem_id="tools",
            )
            with gr.Row():
                tool_input = gr.Textbox(
                    label="Tool call: input", lines=4, max_lines=24, interactive=False, elem_id="tool-input"
                )
                tool_output = gr.Textbox(
                    label="Tool call: output", lines=4, max_lines=24, interactive=False, elem_id="tool-output"
                )
            with gr.Accordion("Every field of this row (JSON)", open=False):
                row_json = gr.JSON(label="Row", show_label=False)
            gr.Markdown("### What changed between two versions")
            with gr.Row():
                diff_old = gr.Dropdown(
                    tags, value=tags[1] if len(tags) > 1 else (tags[0] if tags else None), label="From"
                )
                diff_new = gr.Dropdown(tags, value=tags[0] if tags else None, label="To")
                diff_run = gr.Button("Compare versions")
            diff_summary_md = gr.Markdown(elem_id="diff-summary")
            diff_rows = data_table(
                diff_table({"added": [], "removed": [], "changed": []}),
                text=TEXT_COLUMNS["diff"],
                label="Changes",
                elem_id="changes",
            )

        with gr.Tab("Results"):
            eval_summary = gr.Markdown()
            eval_plot = gr.Plot(label="Accuracy per benchmark", show_label=False)  # the figure has its own titles
            eval_table = data_table(results_table(_NO_RESULTS), label="Scores", elem_id="scores-table")
            eval_paired = data_table(
                paired_table(_NO_RESULTS),
                label="Paired comparisons (same questions): Δ accuracy, paired bootstrap CI, McNemar's exact test",
                elem_id="paired-table",
            )
            dist_summary = gr.Markdown()
            dist_plot = gr.Plot(label="Quality and complexity per dataset version", show_label=False)
            dist_table = data_table(distributions({}), label="Counts per version", elem_id="counts-table")

        # Compare
        question_version.change(
            space.dataset_questions, question_version, dataset_question, api_name="dataset_questions"
        )
        dataset_question.input(
            space.pick_dataset_question, dataset_question, [prompt, reference], api_name="pick_dataset_question"
        )
        benchmark_question.input(
            space.pick_benchmark_question, benchmark_question, [prompt, reference], api_name="pick_benchmark_question"
        )
        prompt.input(
            lambda: "", None, reference, api_visibility="private", queue=False
        )  # an edited prompt has no reference
        run.click(
            space.compare,
            [prompt, adapter, new_tokens],
            [base_answer, tuned_answer, compare_status],
            api_name="compare",
            concurrency_limit=settings.concurrency,
            concurrency_id="model",
        )
        prompt.submit(
            space.compare,
            [prompt, adapter, new_tokens],
            [base_answer, tuned_answer, compare_status],
            api_visibility="private",
            concurrency_limit=settings.concurrency,
            concurrency_id="model",
        )

        # Explore
        filters = [version, rounds, capabilities, complexities, quality_levels, defender]
        explored = [summary, table, row]
        version.change(space.explore_options, version, [rounds, capabilities], api_name="explore_options").then(
            space.explore, filters, explored, api_name="explore"
        )
        for control in filters[1:]:
            control.input(space.explore, filters, explored, api_visibility="private")
        table.select(space.select_row, None, row, api_visibility="private")
        row.change(
            space.row_details,
            [version, row],
            [
                question,
                reference_answer,
                explanation,
                defender_answer,
                defender_reasoning,
                rationale,
                scores,
                tools,
                tool_input,
                tool_output,
                row_json,
            ],
            api_name="row_details",
        )
        tools.select(space.select_tool_call, [version, row], [tool_input, tool_output], api_visibility="private")
        diff_run.click(space.diff, [diff_old, diff_new], [diff_summary_md, diff_rows], api_name="diff")

        # Page load: fresh choices, the latest version's rows, its changes since the one before, the results.
        demo.load(
            space.startup,
            None,
            [status, question_version, adapter, benchmark_question, version, diff_old, diff_new],
            api_name="startup",
        ).then(space.dataset_questions, question_version, dataset_question, api_visibility="private").then(
            space.explore_options, version, [rounds, capabilities], api_visibility="private"
        ).then(space.explore, filters, explored, api_visibility="private").then(
            space.diff, [diff_old, diff_new], [diff_summary_md, diff_rows], api_visibility="private"
        ).then(
            space.results,
            None,
            [eval_summary, eval_plot, eval_table, eval_paired, dist_summary, dist_plot, dist_table],
            api_name="results",
        )

    demo.queue(max_size=settings.queue_size, default_concurrency_limit=max(2, settings.concurrency))
    return demo


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
