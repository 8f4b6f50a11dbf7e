"""Answers to benchmark prompts, from either engine, behind one function.

`generate_answers(config, groups, output_dir)` answers every group (one variant on one benchmark's examples) greedily
and returns the texts in example order; evaluation then extracts and scores them the same way whichever engine wrote
them (trainer.evaluation.run, nanoflux.scoring).

- `engine: transformers` (the default, for CPU and tests): the base model in-process, left-padded batches of similar
  length through the tokenizer's chat template; each variant's LoRA is loaded once onto the one base model and
  switched to (`activate`).
- `engine: endpoint`: every prompt is one chat request through the builder's transport (`nanoflux.transport.
  EndpointClient`: adaptive concurrency shared by every variant on the endpoint, retries honouring Retry-After) to a
  vLLM / TGI / Inference Endpoint / llama.cpp server that serves the base model and the adapters by name: a
  variant's request names its served model in the OpenAI `model` field (vLLM: a `--lora-modules` name; TGI: an id
  of `LORA_ADAPTERS`, which its chat route reads as `adapter_id`). The server applies its own chat template.

Resume (endpoint engine): every answer is appended to `<output_dir>/answers.jsonl` (nanoflux.journal: checksummed,
fsynced, repaired after a kill) as soon as it arrives, under the key (variant, benchmark, example id, hash of what
was asked of which weights: the served name, the model or adapter reference behind it, the messages, max_tokens,
temperature), so a killed evaluation re-asks only the questions it has no answer for. A question whose request or
adapter reference changed has another key and is asked again; adding a variant or rows reuses every answer that
still matches. The base model is the folder's identity (`run.json`, `nanoflux.runfolder.claim`): another one is
refused (`fresh=True`, `nanoflux eval --fresh`, discards the old answers). A server that now serves other weights
under the same name and reference cannot be told apart: use `--fresh`. One evaluation writes into a folder at a time
(the run folder's lock).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from builder import RoleConfig
from nanoflux import journal as journals
from nanoflux import runfolder
from nanoflux.chat import ChatRequest, EndpointError
from nanoflux.models import model_path
from nanoflux.progress import Progress
from nanoflux.recipe import fail, public_url
from nanoflux.retries import RetryPolicy
from nanoflux.rows import EvalError, Example
from nanoflux.transport import EndpointClient

if TYPE_CHECKING:
    from trainer.evaluation.config import EvalConfig

logger = logging.getLogger(__name__)

ENGINES = ("transformers", "endpoint")
VARIANTS = ("base", "adapter", "baseline")
ANSWERS_FILE = "answers.jsonl"
RUN_FILE = runfolder.RUN_FILE
PROGRESS_INTERVAL = 30.0  # seconds between progress log lines when not on a terminal
IDENTICAL_WARNING_MIN = 10  # questions: an adapter that answers exactly as the base on this many is suspect


# --- config ----------------------------------------------------------------------------------------------


@dataclass
class ServedModels:
    """The model name each variant is served under (null: the default named on `EndpointConfig.models`)."""

    base: str | None = None
    adapter: str | None = None
    baseline: str | None = None


@dataclass
class EndpointConfig:
    """The server of `engine: endpoint`: its URL, its key, and the name each variant is served under."""

    base_url: str = ""
    """vLLM / TGI / Inference Endpoint / llama.cpp server URL, e.g. http://localhost:8000."""
    token_env: str | None = None
    """Name of the environment variable that holds the server's key. A host that is not Hugging Face's gets a key only
    from here; null: Hugging Face hosts (Inference Endpoints) get the Hub login, any other server no key."""
    models: ServedModels = field(default_factory=ServedModels)
    """Served model name per variant (`base`, `adapter`, `baseline`), sent as the request's `model` field: a vLLM
    `--lora-modules` name, a TGI `LORA_ADAPTERS` id. Unset: base = `model`, adapter = `adapter`, baseline =
    `baseline_adapter` (the names TGI gives adapters listed by repo id)."""
    max_concurrency: int = 256
    """Upper bound on requests in flight; below it the client seeks the server's capacity (nanoflux.capacity)."""
    timeout: float = 600.0
    """Seconds per attempt (a long greedy answer on a busy server takes minutes)."""
    max_attempts: int = 6

    def validate(self, path: str) -> None:
        if not self.base_url:
            fail(
                f"{path}.base_url",
                self.base_url,
                "engine endpoint needs a server",
                "set it to the server's URL, e.g. http://localhost:8000 (vllm serve) or http://localhost:8080 (TGI)",
            )
        # The same rules as a builder role's endpoint (URL scheme, token_env is a variable's name, ranges).
        RoleConfig(
            base_url=self.base_url,
            token_env=self.token_env,
            max_concurrency=self.max_concurrency,
            timeout=self.timeout,
            max_attempts=self.max_attempts,
        ).validate(path)
        for variant in VARIANTS:
            name = getattr(self.models, variant)
            if name is not None and not name.strip():
                fail(
                    f"{path}.models.{variant}",
                    name,
                    "empty",
                    "give the name the server serves this variant under (vLLM --lora-modules NAME=path)",
                )


def served_names(config: EvalConfig, variants: Sequence[str]) -> dict[str, str]:
    """The model name each variant's requests carry (endpoint engine)."""
    assert config.endpoint is not None
    defaults = {"base": config.model, "adapter": config.adapter, "baseline": config.baseline_adapter}
    return {v: getattr(config.endpoint.models, v) or str(defaults[v]) for v in variants}


# --- what is asked, what comes back ----------------------------------------------------------------------


@dataclass
class Group:
    """One variant on one benchmark: the examples to answer, and the adapter (transformers engine) it needs."""

    variant: str
    adapter: str | None
    benchmark: str
    examples: Sequence[Example]

    @property
    def label(self) -> str:
        return f"{self.benchmark}/{self.variant}"


@dataclass
class Answers:
    """Every group's answer texts (in example order), how long each group took, and what the engine did."""

    texts: dict[tuple[str, str], list[str]]
    """(variant, benchmark) -> one text per example."""
    seconds: dict[tuple[str, str], float]
    info: dict[str, Any]
    """For results.json's `generation`: the engine, its settings and its counts (asked, replayed, questions/s)."""


def generate_answers(config: EvalConfig, groups: Sequence[Group], output_dir: Path, *, fresh: bool = False) -> Answers:
    """Greedy answers to every group's prompts from `config.engine` (see the module docstring)."""
    if config.engine == "endpoint":
        return _endpoint_answers(config, groups, output_dir, fresh=fresh)
    return _transformers_answers(config, groups)


# --- the transformers engine ------------------------------------------------------------------------------


def load_model(model: str, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) for greedy batched generation: eval mode, on the GPU if there is one, left padding."""
    import torch
    from transformers import AutoModelForCausalLM

    path = model_path(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32}.get(dtype) or getattr(torch, dtype)
    logger.info("Loading %s%s (%s, %s)", model, f" from {path}" if path != model else "", torch_dtype, device)
    tokenizer = load_tokenizer(model)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    base.eval()
    return base, tokenizer


def load_tokenizer(model: str) -> Any:
    """The base model's tokenizer (left padding, a pad token), e.g. for counting training tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path(model), padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def activate(model: Any, variant: str, adapter: str | None) -> Any:
    """The model for `variant`: the plain base model, or base + that LoRA (loaded once, then switched to)."""
    if adapter is None:
        return model
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(adapter, adapter_name=variant)
        model.set_adapter(variant)
    else:
        model = PeftModel.from_pretrained(model, adapter, adapter_name=variant)
    logger.info("Variant %s: LoRA adapter %s", variant, adapter)
    model.eval()
    return model


def chat_prompts(tokenizer: Any, prompts: Sequence[str], enable_thinking: bool | None = None) -> list[str]:
    """Each prompt as one user turn through the tokenizer's chat template, ready for the assistant's answer."""
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, **kwargs
        )
        for p in prompts
    ]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    enable_thinking: bool | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Greedy completions of `prompts`, in left-padded batches of similar length; returned in input order."""
    import torch
    from transformers import GenerationConfig

    texts = chat_prompts(tokenizer, prompts, enable_thinking)
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
    )
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        inputs = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(
            model.device
        )
        with torch.inference_mode():
            generated = model.generate(**inputs, generation_config=generation_config)
        for i, row in zip(batch, generated[:, inputs["input_ids"].shape[1] :], strict=True):
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        if progress is not None:
            progress.update(len(batch))
    return outputs


def _transformers_answers(config: EvalConfig, groups: Sequence[Group]) -> Answers:
    import torch

    torch.manual_seed(config.seed)
    loaded = time.perf_counter()
    model, tokenizer = load_model(config.model, config.dtype)
    load_s = time.perf_counter() - loaded
    texts: dict[tuple[str, str], list[str]] = {}
    seconds: dict[tuple[str, str], float] = {}
    progress = Progress(sum(len(g.examples) for g in groups), desc="eval", unit="question", interval=PROGRESS_INTERVAL)
    started = time.perf_counter()
    try:
        # Base first: a LoRA, once loaded, wraps the model (PeftModel) for every later variant; each LoRA loaded once.
        active = None
        for group in sorted(groups, key=lambda g: VARIANTS.index(g.variant)):
            if group.variant != active:
                model, active = activate(model, group.variant, group.adapter), group.variant
            progress.set_description(f"eval {group.label}")
            start = time.perf_counter()
            texts[(group.variant, group.benchmark)] = generate(
                model,
                tokenizer,
                [e.prompt for e in group.examples],
                max_new_tokens=config.max_new_tokens,
                batch_size=config.batch_size,
                enable_thinking=config.enable_thinking,
                progress=progress,
            )
            seconds[(group.variant, group.benchmark)] = time.perf_counter() - start
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    asked = sum(len(g.examples) for g in groups)
    info = {
        "engine": "transformers",
        "batch_size": config.batch_size,
        "chat_template": "the tokenizer's",
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "asked": asked,
        "replayed": 0,
        "load_s": round(load_s, 1),
        "generation_s": round(elapsed, 1),
        "questions_per_s": round(asked / elapsed, 3) if elapsed > 0 else None,
    }
    return Answers(texts, seconds, info)


# --- the endpoint engine ----------------------------------------------------------------------------------


def request_for(prompt: str, served: str, config: EvalConfig) -> ChatRequest:
    """The greedy chat request of one prompt for the variant served as `served`."""
    thinking = None if config.enable_thinking is None else {"enable_thinking": config.enable_thinking}
    return ChatRequest(
        messages=[{"role": "user", "content": prompt}],
        max_tokens=config.max_new_tokens,
        temperature=0.0,
        chat_template_kwargs=thinking,
    )


def request_key(group: Group, example_id: str, served: str, weights: str, request: ChatRequest) -> str:
    """The journal key of one question: variant, benchmark, example id, and a hash of exactly what is asked of which
    weights (the served name, the model or adapter reference behind it, the messages and generation settings)."""
    asked = {
        "model": served,
        "weights": weights,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
    }
    if request.chat_template_kwargs:  # only when set: the keys of journals written without it stay the same
        asked["chat_template_kwargs"] = request.chat_template_kwargs
    digest = hashlib.sha256(json.dumps(asked, sort_keys=True, ensure_ascii=True).encode()).hexdigest()[:16]
    return f"{group.variant}|{group.benchmark}|{example_id}|{digest}"


@dataclass
class _Question:
    key: str
    group: tuple[str, str]
    index: int
    variant: str
    request: ChatRequest


def open_journal(output_dir: Path, identity: dict[str, Any], *, fresh: bool) -> journals.Journal:
    """The folder's answers journal, once the folder is this evaluation's (`nanoflux.runfolder.claim`: refused when its
    `run.json` names another base model); `fresh` discards the old answers. The caller holds the folder's lock."""
    path = output_dir / ANSWERS_FILE

    def discard() -> None:
        for stale in (path, journals.seal_path(path), journals.damaged_path(path)):
            stale.unlink(missing_ok=True)

    kept = len(journals.scan(path).lines) if path.exists() else 0
    fix = "re-run with --fresh to discard them, or pass another --output_dir"
    runfolder.claim(
        output_dir, identity, fresh=fresh, discard=discard, what=f"{kept} answer(s) of an evaluation", fix=fix
    )
    return journals.Journal(path)


def _endpoint_answers(config: EvalConfig, groups: Sequence[Group], output_dir: Path, *, fresh: bool) -> Answers:
    assert config.endpoint is not None
    endpoint = config.endpoint
    served = served_names(config, sorted({g.variant for g in groups}, key=VARIANTS.index))
    output_dir.mkdir(parents=True, exist_ok=True)
    with runfolder.locked(output_dir, "eval"):
        journal = open_journal(output_dir, {"engine": "endpoint", "model": config.model}, fresh=fresh)
        try:
            questions: list[_Question] = []
            texts: dict[tuple[str, str], list[str]] = {}
            for group in groups:
                key = (group.variant, group.benchmark)
                texts[key] = [""] * len(group.examples)
                for i, example in enumerate(group.examples):
                    request = request_for(example.prompt, served[group.variant], config)
                    request.role = f"eval {group.label}"
                    weights = group.adapter or config.model
                    questions.append(
                        _Question(
                            request_key(group, example.id, served[group.variant], weights, request),
                            key,
                            i,
                            group.variant,
                            request,
                        )
                    )
            pending = [q for q in questions if q.key not in journal]
            for q in questions:
                if q.key in journal:
                    texts[q.group][q.index] = journal.records[q.key]["text"]
            unused = len(journal) - (len(questions) - len(pending))
            if len(questions) > len(pending):
                logger.info(
                    "Resuming: %d of %d answers are in %s; asking the other %d",
                    len(questions) - len(pending),
                    len(questions),
                    journal.path,
                    len(pending),
                )
            if unused > 0:
                logger.info(
                    "%d answer(s) in %s belong to other questions, settings (prompts, max_new_tokens) or adapters: not"
                    " used",
                    unused,
                    journal.path,
                )
            clients = {
                v: EndpointClient(
                    name=f"eval-{v}",
                    base_url=endpoint.base_url,
                    model=served[v],
                    token_env=endpoint.token_env,
                    max_concurrency=endpoint.max_concurrency,
                    structured_output="none",
                    retry=RetryPolicy(max_attempts=endpoint.max_attempts, timeout=endpoint.timeout),
                )
                for v in served
            }
            started = time.perf_counter()
            spans: dict[tuple[str, str], list[float]] = {}
            try:
                asyncio.run(_ask(pending, clients, journal, texts, spans, endpoint.max_concurrency))
            except EndpointError as err:
                done = len(journal)
                raise EvalError(
                    f"{err}. {done} answer(s) are kept in {journal.path}: re-run the same command to resume (only the "
                    f"{len(questions) - sum(q.key in journal for q in questions)} unanswered questions are asked)"
                ) from None
            elapsed = time.perf_counter() - started
        finally:
            journal.close()
    stats = [c.stats for c in clients.values()]
    _warn_identical(texts, served)
    seconds = {key: span[1] - span[0] for key, span in spans.items()}
    info = {
        "engine": "endpoint",
        "server": public_url(endpoint.base_url),
        "served_models": served,
        "chat_template": "the server's",
        "max_concurrency": endpoint.max_concurrency,
        "batch_size": None,
        "dtype": "as served",
        "device": f"endpoint {public_url(endpoint.base_url)}",
        "asked": len(pending),
        "replayed": len(questions) - len(pending),
        "http_attempts": sum(s.attempts for s in stats),
        "retries": sum(s.retries for s in stats),
        "completion_tokens": sum(s.completion_tokens for s in stats),
        "generation_s": round(elapsed, 1),
        "questions_per_s": round(len(pending) / elapsed, 3) if pending and elapsed > 0 else None,
    }
    return Answers(texts, seconds, info)


async def _ask(
    pending: list[_Question],
    clients: dict[str, EndpointClient],
    journal: journals.Journal,
    texts: dict[tuple[str, str], list[str]],
    spans: dict[tuple[str, str], list[float]],
    workers: int,
) -> None:
    """Ask every pending question (variant by variant, so a LoRA server mostly batches one adapter at a time), each
    answer journaled as it arrives. The first failure cancels the rest: what was answered stays in the journal."""
    progress = Progress(len(pending), desc="eval (endpoint)", unit="question", interval=PROGRESS_INTERVAL)
    queue = iter(pending)

    async def worker() -> None:
        for question in queue:  # one shared iterator: each question is taken once
            spans.setdefault(question.group, [time.perf_counter(), 0.0])
            response = await clients[question.variant].chat(question.request)
            variant, benchmark = question.group
            await journal.aput(
                {
                    "key": question.key,
                    "variant": variant,
                    "benchmark": benchmark,
                    "text": response.text,
                    "finish_reason": response.finish_reason,
                    "prompt_tokens": response.prompt_tokens,
                    "completion_tokens": response.completion_tokens,
                    "retries": response.retries,
                    "finished_at": runfolder.utc_now(),
                }
            )
            texts[question.group][question.index] = response.text
            spans[question.group][1] = time.perf_counter()
            progress.update()

    try:
        if pending:
            async with asyncio.TaskGroup() as tasks:
                for _ in range(min(workers, len(pending))):
                    tasks.create_task(worker())
    except ExceptionGroup as group:  # the first failure (the others were cancelled), as itself
        raise group.exceptions[0] from None
    finally:
        progress.close()
        for client in clients.values():
            await client.aclose()


def _warn_identical(texts: dict[tuple[str, str], list[str]], served: dict[str, str]) -> None:
    """An adapter whose answers equal the base model's on every question is probably not what the server ran: TGI
    (and llama.cpp's server) answer a name they do not know with the base model instead of an error."""
    for variant in ("adapter", "baseline"):
        pairs = [
            (texts[(variant, b)], texts[("base", b)]) for (v, b) in texts if v == variant and ("base", b) in texts
        ]
        n = sum(len(a) for a, _ in pairs)
        if n >= IDENTICAL_WARNING_MIN and all(a == b for a, b in pairs):
            logger.warning(
                "variant %s (served as %r) answered exactly as the base model on all %d questions: is the adapter"
                " served under that name? (TGI serves the base model for an unknown adapter id; vLLM lists its names"
                " at /v1/models)",
                variant,
                served.get(variant),
                n,
            )


# --- the output folder ------------------------------------------------------------------------------------


class OutputFolder:
    """`with OutputFolder(path):` a failed evaluation leaves the folder as it found it, except for a resumable journal.

    On an exception, every file and folder the run created is removed again (an evaluation that failed before any
    answer leaves no empty folder behind); an endpoint journal holding answers is kept, with its `run.json`, since a
    re-run answers from it and asks only the rest. Files that were there before the run are never touched."""

    KEEP = (
        ANSWERS_FILE,
        journals.seal_path(Path(ANSWERS_FILE)).name,
        journals.damaged_path(Path(ANSWERS_FILE)).name,
        RUN_FILE,
        runfolder.LOCK_FILE,
    )

    def __init__(self, path: Path):
        self.path = path
        self.before: set[Path] = set()

    def __enter__(self) -> Self:
        self.before = {self.path, *self.path.rglob("*")} if self.path.exists() else set()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None or not self.path.exists():
            return
        answers = self.path / ANSWERS_FILE
        kept = len(journals.scan(answers).lines) if answers.exists() else 0
        created = sorted(
            (p for p in {self.path, *self.path.rglob("*")} if p not in self.before), key=lambda p: -len(p.parts)
        )
        for path in created:
            if kept and path.parent == self.path and path.name in self.KEEP:
                continue
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        if kept:
            logger.warning(
                "The evaluation failed; %d answer(s) are kept in %s: re-run the same command to resume", kept, answers
            )
