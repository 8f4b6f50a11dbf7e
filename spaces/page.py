"""The Space's page: the Gradio Blocks (Compare, Explore, Results tabs) wired to a `NanoFluxSpace`'s handlers, with
its queue configured (`build_demo`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
from evaluation import paired_table, results_table
from tables import data_table
from versions import (
    DEFENDER_CHOICES,
    LEVELS,
    TEXT_COLUMNS,
    diff_table,
    distributions,
    rows_table,
    scores_table,
    tools_table,
)

if TYPE_CHECKING:
    from app import NanoFluxSpace

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
