"""The embedded backend: GGUF -> plain HF cache, batched / seeded / JSON-constrained generation.

The `slow` tests run the real SmolLM2-135M on CPU; the GGUF is converted once per session into a
session temp dir (NANOFLUX_CACHE), and the model is loaded once per process.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from builder import embedded
from builder.chat import ChatRequest
from builder.embedded import DEFAULT_MODEL_ID, EmbeddedClient, embedded_model_path

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["answer", "score"],
}


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="session")
def model_dir(embedded_model_dir):
    return embedded_model_dir


@pytest.fixture(scope="session")
def client(model_dir):
    c = EmbeddedClient()
    c.load()
    return c


# --- fast: no model --------------------------------------------------------------------------------


def test_unknown_model_id_is_refused_with_a_helpful_message(tmp_path):
    with pytest.raises(ValueError) as err:
        embedded_model_path("Qwen/Qwen2.5-0.5B-Instruct", cache_dir=tmp_path)
    message = str(err.value)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in message
    assert DEFAULT_MODEL_ID in message
    assert "base_url" in message
    assert not any(tmp_path.iterdir())  # nothing converted, nothing written

    with pytest.raises(ValueError, match="base_url"):
        EmbeddedClient("meta-llama/Llama-3.1-8B-Instruct")


def test_bad_sampling_parameters_are_refused_before_loading(tmp_path):
    c = EmbeddedClient(cache_dir=tmp_path)
    for bad in (
        ChatRequest(messages=_user("hi"), temperature=-1),
        ChatRequest(messages=_user("hi"), max_tokens=0),
        ChatRequest(messages=_user("hi"), top_p=0.0),
        ChatRequest(messages=[]),
    ):
        with pytest.raises(ValueError):
            asyncio.run(c.chat(bad))
    assert c._engine.model is None
    assert not any(tmp_path.iterdir())


def test_a_failed_conversion_leaves_no_cache_behind(tmp_path, monkeypatch):
    def crash(gguf, model_id, info, out):
        (out / "model.safetensors").write_bytes(b"half a file")
        raise RuntimeError("power cut")

    monkeypatch.setattr(embedded, "_convert", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        embedded_model_path(cache_dir=tmp_path)
    models = tmp_path / "models"
    assert list(models.iterdir()) == []  # neither the target nor a temp dir


# --- slow: the real model --------------------------------------------------------------------------


@pytest.mark.slow
def test_cache_is_a_plain_trainable_model(model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (model_dir / "model.safetensors").is_file()
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]  # no temp dirs left

    t0 = time.perf_counter()
    assert embedded_model_path() == model_dir  # second call: cache hit, no reconversion
    assert time.perf_counter() - t0 < 5

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert model.dtype == torch.float32
    params = list(model.parameters())
    assert params and all(p.requires_grad for p in params)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(_user("hi"), tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

    batch = tokenizer("The capital of France is Paris.", return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.embed_tokens.weight.grad is not None

    model.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file()


@pytest.mark.slow
def test_chat_returns_text_and_exact_token_counts(client):
    request = ChatRequest(messages=_user("What is the capital of France?"), max_tokens=32, temperature=0)
    response = asyncio.run(client.chat(request))
    assert "Paris" in response.text
    tokenizer = client._engine.tokenizer
    prompt = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
    assert response.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert response.finish_reason == "stop"
    # the text plus the closing <|im_end|>
    assert response.completion_tokens == len(tokenizer(response.text, add_special_tokens=False)["input_ids"]) + 1
    assert response.meta["model"] == DEFAULT_MODEL_ID


@pytest.mark.slow
def test_json_schema_constrained_answer_parses_and_validates(client):
    request = ChatRequest(
        messages=_user('Is water wet? Reply in JSON with a short "answer" and a "score" from 1 to 5.'),
        max_tokens=96,
        temperature=0,
        json_schema=SCHEMA,
    )
    response = asyncio.run(client.chat(request))
    assert response.finish_reason == "stop", response.text
    data = json.loads(response.text)
    assert set(data) == {"answer", "score"}
    assert isinstance(data["answer"], str)
    assert isinstance(data["score"], int) and 1 <= data["score"] <= 5
    assert response.text == json.dumps(data)  # any_whitespace=False: compact, one line
    assert len(client._engine._grammars) >= 1  # compiled once, cached per schema


@pytest.mark.slow
def test_greedy_and_seeded_sampling_are_reproducible(client):
    async def twice(request):
        return [await client.chat(request) for _ in range(2)]

    greedy = asyncio.run(twice(ChatRequest(messages=_user("Name a color."), max_tokens=16, temperature=0)))
    assert greedy[0].text == greedy[1].text and greedy[0].completion_tokens == greedy[1].completion_tokens

    seeded = ChatRequest(messages=_user("Name a color."), max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    sampled = asyncio.run(twice(seeded))
    assert sampled[0].text == sampled[1].text


@pytest.mark.slow
def test_concurrent_calls_are_served_in_one_batch(model_dir):
    c = EmbeddedClient(batch_size=8)
    requests = [
        ChatRequest(messages=_user("What is 2 + 2?"), max_tokens=24, temperature=0),
        ChatRequest(messages=_user("Name a fruit."), max_tokens=24, temperature=0.8, seed=1),
        ChatRequest(messages=_user("Is the sun a star? Answer in JSON."), max_tokens=64, temperature=0, json_schema=SCHEMA),
        ChatRequest(messages=_user("Write a long poem about the sea."), max_tokens=5, temperature=0),
    ]

    async def main():
        return await asyncio.gather(*(c.chat(r) for r in requests))

    responses = asyncio.run(main())
    assert c.generate_calls == 1
    assert [r.meta["batch_size"] for r in responses] == [4, 4, 4, 4]
    for request, response in zip(requests, responses):
        assert response.text
        assert 0 < response.completion_tokens <= request.max_tokens
    assert responses[3].completion_tokens == 5 and responses[3].finish_reason == "length"
    if responses[2].finish_reason == "stop":
        json.loads(responses[2].text)


@pytest.mark.slow
def test_batched_greedy_matches_unbatched(client):
    """Left padding + per-row processing do not change what a request gets."""
    prompts = ["What is the capital of Italy?", "Say hello.", "Count to five."]
    requests = [ChatRequest(messages=_user(p), max_tokens=20, temperature=0) for p in prompts]

    async def together():
        return await asyncio.gather(*(client.chat(r) for r in requests))

    async def alone():
        return [await client.chat(r) for r in requests]

    assert [r.text for r in asyncio.run(together())] == [r.text for r in asyncio.run(alone())]


def test_env_var_sets_the_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    assert embedded.cache_root() == tmp_path
    monkeypatch.delenv(embedded.CACHE_ENV)
    assert embedded.cache_root() == embedded.Path(os.path.expanduser("~")) / ".cache" / "nanoflux"
