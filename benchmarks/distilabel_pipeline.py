"""The NanoFlux three-role workload as a distilabel pipeline, for the side-by-side benchmark
(`benchmarks/versus_distilabel.py`).

Usage (what `versus_distilabel` runs, in an interpreter that has distilabel; NanoFlux need not be installed there):
    python -m benchmarks.distilabel_pipeline spec.json result.json

    LoadDataFromDicts (one row per attack, the Attacker prompt NanoFlux renders)
      -> attacker TextGeneration -> ParseAttack
      -> defender TextGeneration -> ParseDefense
      -> solver   TextGeneration -> ParseSolution  (the Judge's blind solve)
      -> judge    TextGeneration

Every task uses `OpenAILLM` pointed at the loopback server's `/v1`, with the system prompts and user templates of
NanoFlux's roles (converted to Jinja by `versus_distilabel.pipeline_spec`), so the server sees the same roles, the
same number of calls and the same answer lengths as from a NanoFlux build. Each task sends `input_batch_size`
requests at once (distilabel's concurrency knob). The pipeline's own cache (its resume mechanism) is on, in a fresh
folder. `result.json` gets the wall time of `pipeline.run` and the row count.
"""

# No `from __future__ import annotations`: distilabel reads the `StepInput` type hint of each step at run time.
import json
import sys
import time
from pathlib import Path
from typing import Any

from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, StepInput, step
from distilabel.steps.tasks import TextGeneration


def _json_object(text: str | None) -> dict[str, Any]:
    """The first JSON object in a generation (the roles answer in JSON), {} when there is none."""
    text = text or ""
    start = text.find("{")
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start) if start >= 0 else (None, 0)
    except json.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {}


@step(inputs=["attack"], outputs=["question", "reference_answer", "explanation"])
def ParseAttack(inputs: StepInput):  # noqa: N802 - distilabel names steps like classes
    for row in inputs:
        data = _json_object(row["attack"])
        row.update(
            question=str(data.get("question", "")),
            reference_answer=str(data.get("reference_answer", "")),
            explanation=str(data.get("explanation", "")),
        )
    yield inputs


@step(inputs=["defense"], outputs=["defender_reasoning", "defender_answer"])
def ParseDefense(inputs: StepInput):  # noqa: N802
    for row in inputs:
        data = _json_object(row["defense"])
        row.update(defender_reasoning=str(data.get("reasoning", "")), defender_answer=str(data.get("answer", "")))
    yield inputs


@step(inputs=["solution"], outputs=["blind_reasoning", "blind_answer"])
def ParseSolution(inputs: StepInput):  # noqa: N802
    for row in inputs:
        data = _json_object(row["solution"])
        row.update(blind_reasoning=str(data.get("reasoning", "")), blind_answer=str(data.get("answer", "")))
    yield inputs


def build_pipeline(spec: dict[str, Any]) -> Pipeline:
    batch = spec["input_batch_size"]

    def llm(role: str) -> OpenAILLM:
        return OpenAILLM(
            model=spec["model"],
            base_url=spec["base_url"],
            api_key="loopback",  # the loopback server checks no key; OpenAILLM insists on one
            timeout=spec["timeout"],
            max_retries=spec["max_retries"],
            generation_kwargs={"max_new_tokens": spec["max_tokens"][role], "temperature": spec["temperature"][role]},
        )

    with Pipeline(name="nanoflux-workload", cache_dir=spec["cache_dir"]) as pipeline:
        rows = LoadDataFromDicts(data=spec["rows"], batch_size=batch)
        attacker = TextGeneration(
            name="attacker",
            llm=llm("attacker"),
            system_prompt=spec["system"]["attacker"],
            template="{{ attack_prompt }}",
            columns=["attack_prompt"],
            output_mappings={"generation": "attack"},
            input_batch_size=batch,
        )
        defender = TextGeneration(
            name="defender",
            llm=llm("defender"),
            system_prompt=spec["system"]["defender"],
            template=spec["template"]["defender"],
            columns=["question"],
            output_mappings={"generation": "defense"},
            input_batch_size=batch,
        )
        solver = TextGeneration(
            name="solver",
            llm=llm("solver"),
            system_prompt=spec["system"]["solver"],
            template=spec["template"]["solver"],
            columns=["question"],
            output_mappings={"generation": "solution"},
            input_batch_size=batch,
        )
        judge = TextGeneration(
            name="judge",
            llm=llm("judge"),
            system_prompt=spec["system"]["judge"],
            template=spec["template"]["judge"],
            columns=[
                "question",
                "reference_answer",
                "explanation",
                "blind_answer",
                "blind_reasoning",
                "defender_reasoning",
                "defender_answer",
            ],
            output_mappings={"generation": "verdict"},
            input_batch_size=batch,
        )
        parse_attack, parse_defense, parse_solution = (
            parse(input_batch_size=batch) for parse in (ParseAttack, ParseDefense, ParseSolution)
        )
        rows >> attacker >> parse_attack >> defender >> parse_defense >> solver >> parse_solution >> judge
    return pipeline


def main(spec_path: str, result_path: str) -> None:
    import distilabel

    spec = json.loads(Path(spec_path).read_text())
    pipeline = build_pipeline(spec)
    started = time.perf_counter()
    distiset = pipeline.run(use_cache=True)
    wall = time.perf_counter() - started
    data = distiset["default"]["train"]
    result = {
        "wall_s": round(wall, 3),
        "rows": len(data),
        "verdicts": sum(bool(v) for v in data["verdict"]),
        "distilabel_version": distilabel.__version__,
        "python": sys.version.split()[0],
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
