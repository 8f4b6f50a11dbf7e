"""What an evaluation compares: the variants (`base`, `adapter` = base + the NanoFlux LoRA, `baseline` = base + a LoRA
fine-tuned on a full benchmark training set), each adapter checked to exist before any model loads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nanoflux.rows import EvalError
from trainer.evaluation.config import EvalConfig

logger = logging.getLogger(__name__)


def resolve_adapter(ref: str, *, field_name: str, optional: bool = False, base_model: str | None = None) -> str | None:
    """Check an adapter exists (a local folder, else a Hub repo with `adapter_config.json`) before any model loads.

    Returns `ref`, or None (with a warning) when it is missing and `optional`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    local = Path(ref)
    try:
        if local.is_dir():
            config_file = local / "adapter_config.json"
            if not config_file.is_file():
                raise EvalError(
                    f"{field_name}: {ref} holds no adapter_config.json. Fix: point it at the folder `nanoflux train`"
                    " wrote (its output_dir)"
                )
        else:
            config_file = Path(hf_hub_download(ref, "adapter_config.json"))
    except (OSError, HFValidationError, EntryNotFoundError) as err:
        if optional:
            logger.warning(
                "%s %r not found (no such folder, and not readable from the Hub: %s): evaluating the base model only",
                field_name,
                ref,
                type(err).__name__,
            )
            return None
        raise EvalError(
            f"{field_name}: adapter {ref!r} not found (no such folder, and the Hub said {type(err).__name__}). Fix:"
            f" train one first (nanoflux train), check the repo id and HF_TOKEN, or set {field_name}: null"
        ) from None
    trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if base_model and trained_on and trained_on != base_model:
        logger.warning("%s %s was trained on %s, but the base model is %s", field_name, ref, trained_on, base_model)
    return ref


def evaluation_variants(config: EvalConfig) -> dict[str, str | None]:
    """Variant -> its adapter reference (None: the base model). In-process, each adapter is checked to exist before any
    model loads; an endpoint serves them by name, so the server is the judge of that (a missing name fails the first
    request on vLLM; TGI and llama.cpp answer it with the base model, which `generation` warns about)."""
    variants: dict[str, str | None] = {"base": None} if config.evaluate_base else {}
    in_process = config.engine == "transformers"
    if config.adapter:
        adapter = (
            resolve_adapter(
                config.adapter, field_name="adapter", optional=config.adapter_optional, base_model=config.model
            )
            if in_process
            else config.adapter
        )
        if adapter:
            variants["adapter"] = adapter
    if config.baseline_adapter:
        variants["baseline"] = (
            resolve_adapter(config.baseline_adapter, field_name="baseline_adapter", base_model=config.model)
            if in_process
            else config.baseline_adapter
        )
    if not variants:
        raise EvalError(
            "nothing to evaluate: evaluate_base is false and no adapter was found. Fix: name an adapter, or set"
            " evaluate_base true"
        )
    return variants
