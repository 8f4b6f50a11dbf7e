"""The comparison: one prompt answered by the base model and by base + a NanoFlux LoRA adapter, streamed side by side.

The base model is loaded once. Adapters are loaded into the same `PeftModel` under their own names, and one
`generate` call runs a batch of two copies of the prompt with `adapter_names=["__base__", <adapter>]` (PEFT's
mixed-adapter batches): row 0 goes through the base weights only, row 1 through the LoRA. Both answers therefore
stream together, token by token, for the memory of one model and the time of about one generation. A lock keeps
one generation at a time on the shared model (the Space's queue bounds how many wait).

Adapter versions: a local PEFT folder is one version; a Hub model repo offers its tags and `main` (or, when it has
no tag, its recent commits), each loaded at that revision.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, RepositoryNotFoundError

logger = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MAX_LOADED_ADAPTERS = 4
MAX_COMMITS = 10
_VERSION_TAG = re.compile(r"^v(\d+)$")


class ModelError(RuntimeError):
    """A model or adapter that cannot be used; the message says why and what to do."""


def shown_path(path: str) -> str:
    """A folder as the page names it: relative to the working directory when it is inside it (the absolute path
    says where this machine keeps things, not what the folder is)."""
    try:
        relative = Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path
    return str(relative) if str(relative) != "." else path


def adapter_versions(refs: list[str], api: HfApi | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """([(label, spec)], problems) for the configured adapters: every version that can be selected, and a message
    for each adapter that cannot be found. A spec is a folder, or `repo_id@revision`."""
    api = api or HfApi()
    choices: list[tuple[str, str]] = []
    problems: list[str] = []
    for ref in refs:
        if Path(ref).is_dir():
            if (Path(ref) / "adapter_config.json").is_file():
                choices.append((f"{shown_path(ref)} (local folder)", ref))
            else:
                problems.append(
                    f"Adapter folder {ref} holds no adapter_config.json. Fix: point it at the folder `nanoflux train`"
                    " wrote"
                )
            continue
        repo, _, revision = ref.partition("@")
        if revision:
            choices.append((f"{repo} @ {revision}", ref))
            continue
        try:
            refs_ = api.list_repo_refs(repo)
            tags = sorted(
                refs_.tags, key=lambda t: (-int(m.group(1)) if (m := _VERSION_TAG.match(t.name)) else 0, t.name)
            )
            versions = [(f"{repo} @ {b.name}", f"{repo}@{b.name}") for b in refs_.branches if b.name == "main"]
            versions += [(f"{repo} @ {t.name}", f"{repo}@{t.name}") for t in tags]
            if not tags:
                commits = api.list_repo_commits(repo)[:MAX_COMMITS]
                versions += [
                    (f"{repo} @ {c.commit_id[:7]} · {c.title[:60]}", f"{repo}@{c.commit_id}") for c in commits[1:]
                ]
            choices += versions
        except (RepositoryNotFoundError, HFValidationError):
            problems.append(
                f"Adapter {ref} not found: no such folder, and no such model repo on {api.endpoint}. "
                "Fix: train one (`nanoflux train --config configs/train/local.yaml`) or set NANOFLUX_ADAPTERS"
            )
        except (HfHubHTTPError, OSError, OfflineModeIsEnabled) as err:
            problems.append(
                f"Adapter {ref}: could not list its versions ({type(err).__name__}). Fix: try again, or check"
                " NANOFLUX_ADAPTERS"
            )
    return choices, problems


def adapter_folder(spec: str) -> str:
    """A local folder holding the adapter `spec` (a folder, or `repo_id@revision`, downloaded at that revision)."""
    if Path(spec).is_dir():
        return spec
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.partition("@")
    try:
        folder = snapshot_download(
            repo, revision=revision or None, allow_patterns=["adapter_config.json", "adapter_model.*"]
        )
    except (HfHubHTTPError, HFValidationError, OSError, OfflineModeIsEnabled) as err:
        raise ModelError(
            f"Adapter {spec} could not be downloaded ({type(err).__name__}). Fix: pick another version, or check"
            " NANOFLUX_ADAPTERS"
        ) from None
    if not (Path(folder) / "adapter_config.json").is_file():
        raise ModelError(
            f"Adapter {spec} has no adapter_config.json. Fix: point NANOFLUX_ADAPTERS at a PEFT adapter repo"
        )
    return folder


class _PairStreamer:
    """A `generate` streamer for a batch of rows: after each step, puts every row's text so far on a queue."""

    def __init__(self, tokenizer: Any, rows: int, stop_ids: set[int]):
        self.tokenizer, self.stop_ids = tokenizer, stop_ids
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.finished = [False] * rows
        self.queue: queue.Queue[tuple[str, ...] | BaseException | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt itself
            self._prompt_seen = True
            return
        for row, ids in enumerate(value.reshape(len(self.tokens), -1).tolist()):
            for token in ids:
                if self.finished[row]:
                    break
                if token in self.stop_ids:
                    self.finished[row] = True
                else:
                    self.tokens[row].append(token)
        self.queue.put(self.texts())

    def end(self) -> None:
        self.queue.put(None)

    def texts(self) -> tuple[str, ...]:
        return tuple(self.tokenizer.decode(ids, skip_special_tokens=True) for ids in self.tokens)


class Comparison:
    """The base model (loaded on first use) and the adapters loaded into it."""

    def __init__(
        self, base_model: str, *, name: str | None = None, max_prompt_tokens: int = 1024, dtype: str = "auto"
    ):
        self.base_model = base_model
        self.name = name or base_model  # what messages call it (a Hub id, where `base_model` is a local copy)
        self.max_prompt_tokens = max_prompt_tokens
        self.dtype = dtype
        self.model: Any = None
        self.tokenizer: Any = None
        self._adapters: OrderedDict[str, str] = OrderedDict()  # spec -> adapter name, least recently used first
        self._count = 0
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the base model and tokenizer once (CPU unless there is a GPU)."""
        with self._lock:
            if self.model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32}.get(self.dtype) or getattr(
                torch, self.dtype
            )
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.base_model)
                model = AutoModelForCausalLM.from_pretrained(self.base_model, dtype=dtype).to(device)
            except (OSError, ValueError, HfHubHTTPError, OfflineModeIsEnabled) as err:
                raise ModelError(
                    f"The base model {self.name} could not be loaded ({type(err).__name__}). "
                    "Fix: set NANOFLUX_BASE_MODEL to a Hub model id or a model folder"
                ) from None
            model.eval()
            self.model, self.tokenizer = model, tokenizer
            logger.info("Loaded %s from %s (%s, %s)", self.name, self.base_model, dtype, device)

    def _activate(self, spec: str) -> str:
        """The adapter name of `spec`, loading it into the model first if needed (caller holds the lock)."""
        from peft import PeftModel

        if spec in self._adapters:
            self._adapters.move_to_end(spec)
            return self._adapters[spec]
        folder = adapter_folder(spec)
        name = f"adapter_{self._count}"
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(folder, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelError(
                f"Adapter {spec} does not fit the base model {self.name} ({type(err).__name__}: {str(err)[:200]})."
                " Fix: pick an adapter trained on this base model"
            ) from None
        self.model.eval()
        self._count += 1
        self._adapters[spec] = name
        if len(self._adapters) > MAX_LOADED_ADAPTERS:
            _, oldest = self._adapters.popitem(last=False)
            self.model.delete_adapter(oldest)
        logger.info("Adapter %s loaded as %s", spec, name)
        return name

    def prompt_ids(self, prompt: str) -> Any:
        """The prompt as one user turn through the chat template, as input ids (refused when too long)."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.shape[1] > self.max_prompt_tokens:
            raise ModelError(
                f"The prompt is {ids.shape[1]} tokens; the limit is {self.max_prompt_tokens}. Fix: shorten it"
            )
        return ids

    def stream(self, prompt: str, adapter: str | None, max_new_tokens: int) -> Iterator[tuple[str, str | None]]:
        """Yield (base answer so far, tuned answer so far) as tokens arrive; the tuned answer is None without adapter.

        Greedy decoding, so an answer depends only on the prompt, the weights and `max_new_tokens`.
        """
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        self.load()
        ids = self.prompt_ids(prompt)
        cancelled = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        stop_ids = set(eos if isinstance(eos, list) else [eos])
        rows = 2 if adapter else 1
        streamer = _PairStreamer(self.tokenizer, rows, stop_ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(stop_ids)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=sorted(stop_ids)
        )

        def run() -> None:
            try:
                with self._lock:
                    kwargs: dict[str, Any] = {}
                    if adapter:
                        kwargs["adapter_names"] = [BASE, self._activate(adapter)]
                    elif hasattr(self.model, "peft_config"):
                        kwargs["adapter_names"] = [BASE]
                    batch = ids.repeat(rows, 1).to(self.model.device)
                    with torch.inference_mode():
                        self.model.generate(
                            input_ids=batch,
                            attention_mask=torch.ones_like(batch),
                            generation_config=config,
                            streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                            **kwargs,
                        )
            except BaseException as err:  # handed to the consumer, which raises it
                streamer.queue.put(err)
                streamer.queue.put(None)

        worker = threading.Thread(target=run, name="nanoflux-compare", daemon=True)
        worker.start()
        try:
            while (item := streamer.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item[0], (item[1] if adapter else None)
        finally:
            cancelled.set()  # a client that went away stops the generation at its next token
