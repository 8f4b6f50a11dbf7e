"""The benchmark formats NanoFlux knows (`FORMATS`): each one's answer kind, Hub location, column mapping and where its
dev rows come from, as `Format`s a recipe's benchmark entry names and may override (`nanoflux/benchmarks.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
PUBMEDQA_TEST_IDS = "package:pubmedqa_test_ground_truth.json"
"""The 500 test question ids (pubids) of PubMedQA (pubmedqa/pubmedqa `data/test_ground_truth.json`, MIT)."""
MULTIMEDQA_MMLU = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)


@dataclass(frozen=True)
class Format:
    """A benchmark's answer kind, Hub location and column mapping (any of it can be overridden in the recipe).

    `ids_file` and `dev` describe the Hub dataset at `path` (and `subset`, when set): they apply to entries that read
    it.
    """

    kind: str
    title: str
    path: str | None = None
    subset: str | None = None
    split: str = "test"
    columns: dict[str, Any] = field(default_factory=dict)
    headerless: dict[str, Any] | None = None
    """Columns of the format's headerless CSV release (`header: false`), by position."""
    ids_file: str | None = None
    dev: dict[str, Any] | None = None
    multimedqa: bool = False


FORMATS: dict[str, Format] = {
    "gsm_hard": Format(  # one split (1,319 rows): the dev rows are a seeded sample of GSM8K's train split
        "number",
        "GSM-Hard",
        "reasoning-machines/gsm-hard",
        split="train",
        columns={"question": "input", "answer": "target"},
        dev={
            "format": "gsm8k",
            "path": "openai/gsm8k",
            "subset": "main",
            "holdout_from": "train",
            "size": 500,
            "seed": 0,
        },
    ),
    "medqa": Format(  # train / test only: the dev rows are a seeded sample of train
        "choice",
        "MedQA (USMLE, 4 options)",
        "GBaker/MedQA-USMLE-4-options",
        columns={"question": "question", "options": "options", "answer": "answer_idx", "answer_type": "letter"},
        dev={"holdout_from": "train", "size": 500, "seed": 0},
        multimedqa=True,
    ),
    "medmcqa": Format(  # the test split has no public labels: MultiMedQA reports validation, so dev comes from train
        "choice",
        "MedMCQA",
        "openlifescienceai/medmcqa",
        split="validation",
        columns={
            "id": "id",
            "question": "question",
            "option_columns": ["opa", "opb", "opc", "opd"],
            "answer": "cop",
            "answer_type": "index",
            "answer_base": 0,
            "explanation": "exp",
        },
        dev={"holdout_from": "train", "size": 500, "seed": 0},
        multimedqa=True,
    ),
    "pubmedqa": Format(  # pqa_labeled (1,000 rows, one split): the 500 test ids, and the other 500 as dev
        "yes_no_maybe",
        "PubMedQA (PQA-L)",
        "qiaojin/PubMedQA",
        subset="pqa_labeled",
        split="train",
        columns={
            "id": "pubid",
            "question": "question",
            "context": "context.contexts",
            "answer": "final_decision",
            "explanation": "long_answer",
        },
        ids_file=PUBMEDQA_TEST_IDS,
        dev={"exclude_ids_file": PUBMEDQA_TEST_IDS},
        multimedqa=True,
    ),
    "mmlu": Format(  # one subject per benchmark entry: set `subset`, e.g. clinical_knowledge
        "choice",
        "MMLU",
        "cais/mmlu",
        columns={"question": "question", "options": "choices", "answer": "answer", "answer_type": "index"},
        headerless={"question": "0", "option_columns": ["1", "2", "3", "4"], "answer": "5", "answer_type": "letter"},
        dev={"split": "validation"},
        multimedqa=True,
    ),
    "genome_bench": (
        Format(  # options a.-e. inline in `question`; one split: dev = a seeded sample of it (left out of test)
            "choice",
            "Genome-Bench",
            "Mingyin0312/Genome-Bench",
            columns={"question": "question", "answer": "answer", "answer_type": "letter"},
            dev={"holdout_from": "test", "size": 300, "seed": 0},
        )
    ),
    "gsm8k": Format(  # a training source (the GSM-Hard baseline); `answer` = solution, then `#### <number>`
        "number",
        "GSM8K",
        "openai/gsm8k",
        subset="main",
        split="train",
        columns={"question": "question", "answer": "answer", "explanation": "answer"},
        dev={"holdout_from": "train", "size": 500, "seed": 0},
    ),
    # Generic formats: name the columns yourself.
    "choice": Format("choice", "multiple choice"),
    "number": Format("number", "numeric answers"),
    "yes_no_maybe": Format("yes_no_maybe", "yes/no/maybe"),
}
