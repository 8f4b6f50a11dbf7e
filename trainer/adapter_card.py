"""The adapter's model card (`README.md` of a training run's output_dir), rendered from `adapter_card.md` with the
values `training_summary.json` records: the base model, the data pinned as `repo@tag@commit`, the hyperparameters
trained with, the loss and the compute. An evaluation already written into the card (trainer.evaluation.model_card) is
kept when the card is rendered again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from trainer.train_config import SUMMARY_FILE

CARD_TEMPLATE = Path(__file__).resolve().parent / "adapter_card.md"
CARD_TAGS = ["nanoflux", "lora", "sft", "trl"]


def placeholder_name(summary: dict[str, Any]) -> str:
    """The adapter's name until it has a repo: the dataset's and the base model's names, e.g.
    `nanoflux-medical-SmolLM2-135M-Instruct-lora` (never the local folder it was saved in)."""
    return f"{summary['dataset']['repo_id'].split('/')[-1]}-{summary['base_model'].rstrip('/').split('/')[-1]}-lora"


def write_card(output_dir: str | Path, adapter_id: str | None = None) -> Path:
    """Render `README.md` in `output_dir` from its `training_summary.json` (the values trained, not the config's
    limits). `adapter_id` is the adapter's repo: the card's title, `model_name` and loading snippet (without one, a
    placeholder name). An evaluation already written into the card (`model-index` and its `## Evaluation` section,
    see trainer/reporting.py) is kept, under the new name."""
    from huggingface_hub import ModelCard, ModelCardData

    from nanoflux.models import PACKAGED_MODELS

    output_dir = Path(output_dir)
    path = output_dir / "README.md"
    summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    earlier = ModelCard.load(path) if path.is_file() else None
    evaluated = earlier is not None and bool(earlier.data.eval_results)
    name = adapter_id or placeholder_name(summary)
    card_data = ModelCardData(
        model_name=name,
        base_model=summary["base_model"],
        library_name="peft",
        license=summary["license"],
        datasets=[summary["dataset"]["repo_id"]],
        tags=CARD_TAGS,
        pipeline_tag="text-generation",
        eval_results=earlier.data.eval_results if evaluated else None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=name,
        adapter_id=adapter_id,
        packaged_base=summary["base_model"] in PACKAGED_MODELS,
        summary=summary,
        hp=summary["hyperparameters"],
    )
    if evaluated:
        section = re.compile(r"^## Evaluation[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
        found = section.search(earlier.text)
        if found:
            card.text = section.sub(lambda _: found.group(0), card.text, count=1)
    card.save(path)
    return path
