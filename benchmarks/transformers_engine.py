"""NanoFlux's former in-process embedded engine (transformers, fp32, micro-batching, xgrammar masks), kept here only so
that benchmarks/embedded_engine.py can compare it with the llama.cpp engine that replaced it. Not used by the package.

As it was in nanoflux/models.py before llama.cpp became the embedded engine (issue 12): one model per process,
loaded from the converted plain HF folder (`nanoflux.models.embedded_model_path`); `chat` requests queue per event
loop, a worker takes up to `batch_size` of them after `batch_wait_s` and runs ONE `model.generate` with left padding in
a single-thread executor; a per-row logits processor applies each row's xgrammar JSON-schema mask and its own
sampling (argmax at temperature 0, else temperature + top-p with a generator seeded from the request's seed); a
per-row stopping criterion ends each row at its own max_tokens. Needs xgrammar (the `test` extra installs it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nanoflux.chat import ChatRequest, ChatResponse
from nanoflux.extras import require_extra
from nanoflux.models import DEFAULT_MODEL_ID, SMOLLM2_CHAT_TEMPLATE, cache_root, embedded_model_path, packaged

log = logging.getLogger(__name__)


class _Prepared:
    """A request turned into what the batch needs."""

    __slots__ = ("error", "generator", "grammar", "ids", "max_new", "request")

    def __init__(self, request: ChatRequest):
        self.request = request
        self.ids: list[int] = []
        self.max_new = 0
        self.grammar = None
        self.generator = None
        self.error: BaseException | None = None


class _RowProcessor:
    """Per-row grammar mask + token choice; generate() then takes the one token left (greedy)."""

    def __init__(self, rows: list[_Prepared], prompt_len: int, stop_ids: list[int], pad_id: int):
        import xgrammar as xgr

        self.rows = rows
        self.prompt_len = prompt_len
        self.stop_ids = list(stop_ids)
        self._stop_set = set(stop_ids)
        self.pad_id = pad_id
        self.active = [True] * len(rows)
        self.matchers = [
            xgr.GrammarMatcher(r.grammar, override_stop_tokens=stop_ids) if r.grammar else None for r in rows
        ]
        self.grammar_rows = [i for i, m in enumerate(self.matchers) if m is not None]
        self.bitmask = None
        if self.grammar_rows:
            vocab = rows[self.grammar_rows[0]].grammar.tokenizer_info.vocab_size
            self.bitmask = xgr.allocate_token_bitmask(len(rows), vocab)
            self.vocab = vocab

    def __call__(self, input_ids, scores):
        import torch
        import xgrammar as xgr

        step = input_ids.shape[1] - self.prompt_len  # tokens generated so far
        if step > 0:  # account for the token each still-active row produced last step
            last = input_ids[:, -1].tolist()
            for i, tok in enumerate(last):
                if not self.active[i]:
                    continue
                m = self.matchers[i]
                if m is not None and not m.is_terminated() and not m.accept_token(tok):
                    log.warning("grammar rejected token %d; row %d continues unconstrained", tok, i)
                    self.matchers[i] = None
                if tok in self._stop_set or step >= self.rows[i].max_new:
                    self.active[i] = False
        live_grammar = [
            i
            for i in self.grammar_rows
            if self.active[i] and self.matchers[i] is not None and not self.matchers[i].is_terminated()
        ]
        if live_grammar:
            for i in live_grammar:
                self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
            device = scores.device
            work = scores if device.type in ("cpu", "cuda") else scores.to("cpu")
            xgr.apply_token_bitmask_inplace(
                work, self.bitmask.to(work.device), vocab_size=self.vocab, indices=live_grammar
            )
            scores = work.to(device)

        chosen = [self.pad_id] * len(self.rows)
        live = [i for i in range(len(self.rows)) if self.active[i]]
        if live:
            stuck = ~torch.isfinite(scores[live]).any(dim=-1)  # grammar allows nothing: end the row
            greedy = [i for i in live if self.rows[i].request.temperature == 0]
            sampled = [i for i in live if self.rows[i].request.temperature > 0]
            if greedy:
                for i, tok in zip(greedy, torch.argmax(scores[greedy], dim=-1).tolist(), strict=True):
                    chosen[i] = tok
            if sampled:
                for i, tok in zip(sampled, self._sample(scores[sampled], sampled), strict=True):
                    chosen[i] = tok
            for i, is_stuck in zip(live, stuck.tolist(), strict=True):
                if is_stuck:
                    chosen[i] = self.stop_ids[0]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen), device=scores.device), torch.tensor(chosen, device=scores.device)] = 0.0
        return out

    def _sample(self, scores, rows: list[int]) -> list[int]:
        """Temperature + top-p sampling, each row with its own generator."""
        import torch

        logits = scores.float().cpu()
        temps = torch.tensor([self.rows[i].request.temperature for i in rows], dtype=logits.dtype)
        logits = logits / temps[:, None]
        top_p = torch.tensor(
            [self.rows[i].request.top_p if self.rows[i].request.top_p is not None else 1.0 for i in rows],
            dtype=logits.dtype,
        )
        if bool((top_p < 1.0).any()):
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly better tokens
            sorted_logits = sorted_logits.masked_fill(before >= top_p[:, None], float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        probs = torch.softmax(logits, dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)
        out = []
        for j, i in enumerate(rows):
            if float(probs[j].sum()) <= 0:  # nothing allowed; the caller ends the row
                out.append(self.stop_ids[0])
            else:
                out.append(int(torch.multinomial(probs[j], 1, generator=self.rows[i].generator)))
        return out


class _RowLimit:
    """Stops each row at its own max_tokens (generate() then pads it)."""

    def __init__(self, limits: list[int], prompt_len: int):
        import torch

        self.limits = torch.tensor(limits)
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        step = input_ids.shape[1] - self.prompt_len
        return (self.limits <= step).to(input_ids.device)


class _Engine:
    """Model, tokenizer and grammar compiler for one packaged model; thread-safe, loaded lazily."""

    def __init__(self, model_id: str, cache_dir: Path):
        self.model_id = model_id
        self.cache_dir = cache_dir
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanoflux-embedded")
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self.model = None
        self.tokenizer = None
        self._compiler = None
        self._grammars: dict[str, Any] = {}
        self.generate_calls = 0
        self.path: Path | None = None

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        if self.model is not None:
            return
        with self._load_lock:
            if self.model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = embedded_model_path(self.model_id, cache_dir=self.cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(path)
            if not tokenizer.chat_template:
                tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            model.to("cuda" if torch.cuda.is_available() else "cpu")
            model.eval()
            self.stop_ids = [tokenizer.eos_token_id]
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
            self.context = int(getattr(model.config, "max_position_embeddings", 2048))
            self.vocab_size = int(model.config.vocab_size)
            self.tokenizer = tokenizer
            self.path = path
            self.model = model

    def _grammar(self, schema: dict[str, Any]):
        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            import xgrammar as xgr

            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            grammar = self._compiler.compile_json_schema(schema, any_whitespace=False)
            self._grammars[key] = grammar
        return grammar

    # -- generation ------------------------------------------------------------------------
    def _prepare(self, request: ChatRequest) -> _Prepared:
        import torch

        p = _Prepared(request)
        try:
            text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            p.ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            room = self.context - len(p.ids)
            if room < 1:
                raise ValueError(f"prompt is {len(p.ids)} tokens; {self.model_id} has a {self.context}-token context")
            p.max_new = min(request.max_tokens, room)
            if request.json_schema is not None:
                p.grammar = self._grammar(request.json_schema)
            if request.temperature > 0:
                seed = request.seed if request.seed is not None else random.getrandbits(63)
                p.generator = torch.Generator().manual_seed(seed)
        except Exception as exc:  # noqa: BLE001 - this request fails; the rest of the batch goes on
            p.error = exc
        return p

    def generate_batch(self, requests: list[ChatRequest]) -> list[ChatResponse | BaseException]:
        """Serve a batch of requests with one ``model.generate`` call (blocking)."""
        self.load()
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        with self._gen_lock:
            prepared = [self._prepare(r) for r in requests]
            rows = [p for p in prepared if p.error is None]
            outputs: dict[int, ChatResponse] = {}
            if rows:
                width = max(len(p.ids) for p in rows)
                ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, p in enumerate(rows):  # left padding
                    ids[i, width - len(p.ids) :] = torch.tensor(p.ids)
                    mask[i, width - len(p.ids) :] = 1
                device = self.model.device
                max_new = max(p.max_new for p in rows)
                config = GenerationConfig(
                    do_sample=False,
                    max_new_tokens=max_new,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                    bos_token_id=self.tokenizer.bos_token_id,
                )
                processor = _RowProcessor(rows, width, self.stop_ids, self.pad_id)
                with torch.inference_mode():
                    out = self.model.generate(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        generation_config=config,
                        logits_processor=LogitsProcessorList([processor]),
                        stopping_criteria=StoppingCriteriaList([_RowLimit([p.max_new for p in rows], width)]),
                    )
                self.generate_calls += 1
                new = out[:, width:].cpu().tolist()
                for i, p in enumerate(rows):
                    toks = new[i][: p.max_new]
                    finish = "length"
                    for k, t in enumerate(toks):
                        if t in self.stop_ids:
                            toks, finish = toks[: k + 1], "stop"
                            break
                    body = toks[:-1] if finish == "stop" else toks
                    outputs[id(p)] = ChatResponse(
                        text=self.tokenizer.decode(body, skip_special_tokens=True),
                        prompt_tokens=len(p.ids),
                        completion_tokens=len(toks),
                        finish_reason=finish,
                        meta={"backend": "embedded", "model": self.model_id, "batch_size": len(rows)},
                    )
            return [p.error if p.error is not None else outputs[id(p)] for p in prepared]


_ENGINES: dict[tuple[str, str], _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(model_id: str, cache_dir: Path) -> _Engine:
    key = (model_id, str(cache_dir))
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _Engine(model_id, cache_dir)
        return engine


# --------------------------------------------------------------------------------------------
# Micro-batching on the event loop
# --------------------------------------------------------------------------------------------


class _Batcher:
    """Collects pending requests on one event loop and feeds them to the engine in batches."""

    def __init__(self, engine: _Engine, batch_size: int, batch_wait_s: float):
        self.engine = engine
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.pending: list[tuple[ChatRequest, asyncio.Future, Any]] = []
        self.worker: asyncio.Task | None = None

    async def submit(self, request: ChatRequest, client: EmbeddedClient) -> ChatResponse:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((request, future, client))
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            if len(self.pending) < self.batch_size and self.batch_wait_s > 0:
                await asyncio.sleep(self.batch_wait_s)
            else:
                await asyncio.sleep(0)
            self.pending = [item for item in self.pending if not item[1].done()]  # drop cancelled
            batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(
                    self.engine.executor, self.engine.generate_batch, [r for r, _, _ in batch]
                )
            except BaseException as exc:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for client in {id(c): c for _, _, c in batch}.values():
                client.generate_calls += 1
            for (_, future, _), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


_BATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, _Batcher]] = weakref.WeakKeyDictionary()


class EmbeddedClient:
    """ChatClient running a packaged model in process, with micro-batched generation.

    All clients share one model per process; clients on the same event loop with the same
    ``batch_size``/``batch_wait_s`` also share one request queue, so requests from different
    roles are batched together. ``generate_calls`` counts the ``model.generate`` calls that
    served at least one request of this client.
    """

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL_ID,
        *,
        name: str | None = None,
        batch_size: int = 8,
        batch_wait_s: float = 0.01,
        cache_dir: Path | None = None,
    ):
        packaged(model_id)  # fail fast, before any loading
        require_extra("test", "xgrammar")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_id = model_id
        self.name = name or f"embedded:{model_id}"
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self._engine = _engine(model_id, Path(cache_dir) if cache_dir is not None else cache_root())
        self.generate_calls = 0

    def load(self) -> None:
        """Load the model now (blocking) instead of on the first request."""
        self._engine.load()

    def _batcher(self) -> _Batcher:
        loop = asyncio.get_running_loop()
        per_loop = _BATCHERS.setdefault(loop, {})
        key = (id(self._engine), self.batch_size, self.batch_wait_s)
        batcher = per_loop.get(key)
        if batcher is None:
            batcher = per_loop[key] = _Batcher(self._engine, self.batch_size, self.batch_wait_s)
        return batcher

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if not request.messages:
            raise ValueError("a chat request needs at least one message")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        if request.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {request.temperature}")
        if request.top_p is not None and not 0 < request.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {request.top_p}")
        return await self._batcher().submit(request, self)

    def __repr__(self) -> str:
        return f"EmbeddedClient(model_id={self.model_id!r}, name={self.name!r}, batch_size={self.batch_size})"
