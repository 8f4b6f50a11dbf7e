"""`nanoflux eval` through the endpoint engine (trainer/evaluation/generation.py): every variant's requests name its
served model, answers score exactly as the in-process engine's do, a killed evaluation resumes asking only what it had
no answer for, a changed evaluation refuses the folder's answers, progress and the summary reach the log, and a failed
evaluation leaves no empty folder (but keeps a journal with answers).

Against the scripted server (localhub.testing.tgi) and, marked slow, the packaged SmolLM2 in-process and a real
llama.cpp server (`python -m llama_cpp.server`, started by benchmarks.eval_engines.packaged_llama_server).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import trainer.evaluation.generation
from localhub.testing.tgi import Fault, ScriptedTGI
from nanoflux import journal as journals
from nanoflux.benchmarks import BenchmarkConfig
from nanoflux.recipe import to_dict
from nanoflux.rows import EvalError
from nanoflux.runfolder import RunFolderError
from trainer.evaluation.config import EvalConfig, build_eval_config
from trainer.evaluation.generation import EndpointConfig, ServedModels
from trainer.evaluation.run import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "samples" / "benchmarks"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _answer(variant: str, prompt: str) -> str:
    """A deterministic answer per (variant, question), parseable or not, right or wrong."""
    h = int(hashlib.sha256(f"{variant}|{prompt}".encode()).hexdigest(), 16)
    if "Final answer: <number>" in prompt or "final answer as a number" in prompt.lower():
        return ["Final answer: 42", "The result is 3.5", "no idea", f"Final answer: {h % 7}"][h % 4]
    if "yes, no or maybe" in prompt:
        return ["Final answer: yes", "no", "It is unclear; maybe.", "cannot say"][h % 4]
    return ["Final answer: A", "The answer is (B).", "Final answer: C", "D", "I am not sure."][h % 5]


def _prompt(body: dict) -> str:
    return body["messages"][-1]["content"]


def _config(tmp_path: Path, url: str, **fields) -> EvalConfig:
    benchmarks = fields.pop("benchmarks", None) or [
        BenchmarkConfig(format="medqa", path=str(FIXTURES / "medqa.jsonl"), limit=4),
        BenchmarkConfig(format="gsm_hard", path=str(FIXTURES / "gsm_hard.jsonl"), split="train", limit=3),
    ]
    endpoint = fields.pop("endpoint", None) or EndpointConfig(
        base_url=url, max_concurrency=8, max_attempts=2, timeout=30
    )
    fields = {"engine": "endpoint", "max_new_tokens": 32, **fields}
    config = EvalConfig(
        model=BASE,
        benchmarks=benchmarks,
        endpoint=endpoint,
        reasoning=False,
        bootstrap_samples=200,
        output_dir=str(tmp_path / "eval"),
        **fields,
    )
    config.validate()
    return config


SERVED = {BASE: "base", "nanoflux-medical": "adapter", "medqa-full": "baseline"}


@pytest.fixture
def lora_server(allow_loopback_offline):
    """A vLLM-like scripted server that answers as the variant the request's `model` names (unknown names: 404)."""

    def responder(body: dict) -> str:
        return _answer(SERVED[body["model"]], _prompt(body))

    def unknown_model(body: dict):
        return (
            None
            if body.get("model") in SERVED
            else Fault.status(404, message=f"The model `{body.get('model')}` does not exist.")
        )

    with ScriptedTGI(responder, fault_for=unknown_model, kind="vllm") as server:
        yield server


@pytest.fixture
def tgi_server(allow_loopback_offline):
    """A TGI-like scripted server (echo answers unless a test sets a responder)."""
    with ScriptedTGI() as server:
        yield server


def _lora_config(tmp_path: Path, url: str, **fields) -> EvalConfig:
    endpoint = EndpointConfig(
        base_url=url,
        max_concurrency=8,
        max_attempts=2,
        timeout=30,
        models=ServedModels(adapter="nanoflux-medical", baseline="medqa-full"),
    )
    fields = {
        "adapter": "org/qwen3-4b-nanoflux-medical-lora",
        "baseline_adapter": "org/qwen3-4b-medqa-full-lora",
        **fields,
    }
    return _config(tmp_path, url, endpoint=endpoint, **fields)


def _scores(results: dict) -> dict:
    return {
        b: {v: {k: x for k, x in r.items() if k != "wall_time_s"} for v, r in by.items()}
        for b, by in results["results"].items()
    }


def _details(folder: Path) -> dict[str, list[dict]]:
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted((folder / "details").glob("*.jsonl"))
    }


# --- requests --------------------------------------------------------------------------------------------


def test_each_variant_is_asked_by_its_served_name_once_per_question(lora_server, tmp_path):
    config = _lora_config(tmp_path, lora_server.url)
    results = main(config)

    bodies = [r.json for r in lora_server.chat_requests]
    assert len(bodies) == 3 * 7  # 3 variants x (4 + 3) questions, each asked once
    by_model = {}
    for body in bodies:
        by_model.setdefault(body["model"], []).append(_prompt(body))
        assert body["temperature"] == 0.0 and body["max_tokens"] == 32 and "response_format" not in body
        assert (
            len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
        )  # the server applies its chat template
    assert set(by_model) == set(SERVED) and all(len(set(p)) == len(p) == 7 for p in by_model.values())
    assert sorted(by_model[BASE]) == sorted(by_model["nanoflux-medical"]) == sorted(by_model["medqa-full"])

    details = _details(tmp_path / "eval")
    for name, records in details.items():
        variant = name.rsplit("-", 1)[1]
        assert all(r["output"] == _answer(variant, r["prompt"]) for r in records)
    gen = results["generation"]
    assert gen["engine"] == "endpoint" and gen["served_models"] == {
        "base": BASE,
        "adapter": "nanoflux-medical",
        "baseline": "medqa-full",
    }
    assert gen["asked"] == 21 and gen["replayed"] == 0 and gen["questions_per_s"] > 0
    assert results["adapter"] == "org/qwen3-4b-nanoflux-medical-lora" and results["variants"] == [
        "base",
        "adapter",
        "baseline",
    ]
    assert set(results["paired"]["medqa"]) == {"adapter-vs-base", "adapter-vs-baseline", "baseline-vs-base"}
    assert "served by http://127.0.0.1" in (tmp_path / "eval" / "results.md").read_text()


def test_tgi_adapters_default_to_their_repo_ids_as_the_model_field(tgi_server, tmp_path):
    # TGI's chat route reads `model` as the adapter_id of a LORA_ADAPTERS entry, named by its repo id by default.
    config = _config(tmp_path, tgi_server.url, adapter="org/nanoflux-lora", evaluate_base=False)
    main(config)
    assert {r.json["model"] for r in tgi_server.chat_requests} == {"org/nanoflux-lora"}


def test_an_unknown_served_name_fails_at_once_with_the_servers_words(lora_server, tmp_path):
    endpoint = EndpointConfig(base_url=lora_server.url, max_attempts=3, models=ServedModels(adapter="nanoflux-typo"))
    config = _config(tmp_path, lora_server.url, adapter="org/x", evaluate_base=False, endpoint=endpoint)
    with pytest.raises(EvalError, match="The model `nanoflux-typo` does not exist"):
        main(config)
    assert not (tmp_path / "eval").exists()  # nothing answered: nothing kept


def test_adapter_answers_identical_to_the_base_are_flagged(tgi_server, tmp_path, caplog):
    tgi_server.responder = lambda body: _answer(
        "base", _prompt(body)
    )  # TGI: an unknown adapter id gets the base model
    config = _config(tmp_path, tgi_server.url, adapter="org/not-loaded")
    config.benchmarks[0].limit = 8
    with caplog.at_level(logging.WARNING, logger="trainer.evaluation.generation"):
        main(config)
    assert (
        "variant adapter (served as 'org/not-loaded') answered exactly as the base model on all 11 questions"
        in caplog.text
    )


# --- the same answers, the same scores ---------------------------------------------------------------------


class _FakeModel:
    dtype, device = "float32", "cpu"

    def __init__(self, variant: str = "base"):
        self.variant = variant


def test_both_engines_score_the_same_answers_identically(lora_server, tmp_path, monkeypatch):
    """The engines differ only in where the text comes from: given the same texts, every score, CI, paired comparison
    and aggregate is identical (answers arrive out of order from the endpoint and are put back in example order)."""
    for name in ("nanoflux", "full"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BASE}))
    monkeypatch.setattr(trainer.evaluation.generation, "load_model", lambda model, dtype: (_FakeModel(), None))
    monkeypatch.setattr(trainer.evaluation.generation, "activate", lambda model, variant, adapter: _FakeModel(variant))

    def fake_generate(model, tokenizer, prompts, progress=None, **kwargs):
        progress.update(len(prompts))
        return [_answer(model.variant, p) for p in prompts]

    monkeypatch.setattr(trainer.evaluation.generation, "generate", fake_generate)

    def benchmarks() -> list[BenchmarkConfig]:
        return [
            BenchmarkConfig(format=f, path=str(FIXTURES / file), **extra)
            for f, file, extra in (
                ("medqa", "medqa.jsonl", {}),
                ("medmcqa", "medmcqa.jsonl", {"split": "validation"}),
                ("pubmedqa", "pubmedqa.parquet", {"split": "train"}),
                ("gsm_hard", "gsm_hard.jsonl", {"split": "train"}),
            )
        ]

    endpoint = EndpointConfig(
        base_url=lora_server.url, models=ServedModels(adapter="nanoflux-medical", baseline="medqa-full")
    )
    common = {"adapter": str(tmp_path / "nanoflux"), "baseline_adapter": str(tmp_path / "full"), "endpoint": endpoint}
    served = main(_config(tmp_path / "a", lora_server.url, benchmarks=benchmarks(), **common))
    in_process = main(
        _config(tmp_path / "b", lora_server.url, benchmarks=benchmarks(), engine="transformers", **common)
    )

    assert _scores(served) == _scores(in_process)  # accuracy, CI, n, correct, unparseable: all but the timings
    for key in ("paired", "aggregates", "variants", "benchmarks"):
        assert served[key] == in_process[key], key
    assert _details(tmp_path / "a" / "eval") == _details(tmp_path / "b" / "eval")
    assert served["generation"]["engine"] == "endpoint" and in_process["generation"]["engine"] == "transformers"


# --- resume ----------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, sys
    from nanoflux.recipe import from_dict
    from trainer.evaluation.config import EvalConfig
    from trainer.evaluation.run import main
    config = from_dict(EvalConfig, json.loads(sys.argv[1]))
    config.validate()
    main(config)
    """)


def test_a_killed_evaluation_resumes_asking_only_unanswered_questions(tmp_path, allow_loopback_offline):
    with ScriptedTGI(lambda body: _answer("base", _prompt(body)), latency=0.3) as server:
        endpoint = EndpointConfig(base_url=server.url, max_concurrency=2, timeout=30)
        config = _config(
            tmp_path,
            server.url,
            endpoint=endpoint,
            benchmarks=[
                BenchmarkConfig(format="medqa", path=str(FIXTURES / "medqa.jsonl")),
                BenchmarkConfig(format="gsm_hard", path=str(FIXTURES / "gsm_hard.jsonl"), split="train"),
            ],
        )
        answers = tmp_path / "eval" / "answers.jsonl"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(to_dict(config))], cwd=ROOT, env=env)
        try:
            deadline = time.monotonic() + 120
            while not (answers.exists() and len(answers.read_bytes().splitlines()) >= 5):
                assert child.poll() is None, "the evaluation ended before it could be killed"
                assert time.monotonic() < deadline, "no answers journaled"
                time.sleep(0.05)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait()
        assert child.returncode == -signal.SIGKILL
        asked_before = {
            (r.json["model"], _prompt(r.json)) for r in server.chat_requests if r.json
        }  # not a body cut by the kill
        kept = len(journals.scan(answers).lines)
        assert 5 <= kept < 16 and not (tmp_path / "eval" / "results.json").exists()

        server.reset()
        results = main(config)

        asked_again = [(r.json["model"], _prompt(r.json)) for r in server.chat_requests]
        assert len(asked_again) == 16 - kept  # only the unanswered questions, each once
        assert len(set(asked_again)) == len(asked_again)
        assert (
            len(asked_before | set(asked_again)) == 16
        )  # an answer in flight at the kill may be asked twice, none lost
        assert results["generation"]["replayed"] == kept and results["generation"]["asked"] == 16 - kept
        assert [r["n"] for r in (results["results"][b]["base"] for b in ("medqa", "gsm-hard"))] == [8, 8]
        for records in _details(tmp_path / "eval").values():
            assert all(r["output"] == _answer("base", r["prompt"]) for r in records)

        server.reset()
        again = main(config)  # a finished evaluation re-run: everything from the journal
        assert server.request_count == 0 and again["generation"]["replayed"] == 16
        assert again["results"] == {
            b: {v: {**r, "wall_time_s": None} for v, r in by.items()} for b, by in results["results"].items()
        }


def test_a_changed_evaluation_reuses_only_matching_answers_and_another_base_model_is_refused(
    lora_server, tmp_path, caplog
):
    main(_lora_config(tmp_path, lora_server.url))
    assert lora_server.request_count == 21

    lora_server.reset()  # max_new_tokens is in every request: everything asked again, nothing refused
    with caplog.at_level(logging.INFO, logger="trainer.evaluation.generation"):
        main(_lora_config(tmp_path, lora_server.url, max_new_tokens=48))
    assert lora_server.request_count == 21 and "21 answer(s) in" in caplog.text and "not used" in caplog.text

    lora_server.reset()  # other adapter weights behind the same served name: only its questions are asked again
    retrained = _lora_config(tmp_path, lora_server.url, max_new_tokens=48)
    retrained.adapter = "org/qwen3-4b-nanoflux-medical-lora-v2"
    results = main(retrained)
    assert {r.json["model"] for r in lora_server.chat_requests} == {
        "nanoflux-medical"
    } and lora_server.request_count == 7
    assert (results["generation"]["asked"], results["generation"]["replayed"]) == (7, 14)

    lora_server.reset()  # one variant less: every answer comes from the journal
    fewer = _lora_config(tmp_path, lora_server.url, max_new_tokens=48, baseline_adapter=None)
    fewer.adapter = retrained.adapter
    assert main(fewer)["generation"]["replayed"] == 14 and lora_server.request_count == 0

    other_base = _lora_config(tmp_path, lora_server.url, max_new_tokens=48)
    other_base.model = "HuggingFaceTB/SmolLM2-360M-Instruct"
    other_base.endpoint.models.base = BASE
    with pytest.raises(
        RunFolderError,
        match=(
            r"holds 49 answer\(s\) of an evaluation of a different recipe \(changed: model: .*135M.* -> .*360M.*\)\."
            r" Fix: re-run with --fresh"
        ),
    ):
        main(other_base)
    assert (tmp_path / "eval" / "results.json").exists()  # the earlier results are left as they were
    main(other_base, fresh=True)
    assert lora_server.request_count == 21 and len(journals.scan(tmp_path / "eval" / "answers.jsonl").lines) == 21


# --- progress, summary, failures -------------------------------------------------------------------------


def test_progress_lines_and_the_summary_reach_the_log_off_a_terminal(lora_server, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(trainer.evaluation.generation, "PROGRESS_INTERVAL", 0.0)
    with caplog.at_level(logging.INFO):
        results = main(_lora_config(tmp_path, lora_server.url))
    progress = [r.getMessage() for r in caplog.records if r.name == "nanoflux.progress"]
    assert progress and progress[-1].startswith("eval (endpoint): 21/21 questions (100%), ")
    assert any(" questions/s, ETA " in line for line in progress)
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Evaluation of "))
    assert "(base, adapter, baseline)" in summary and "21 questions answered by endpoint http://127.0.0.1" in summary
    assert "Accuracy % [95% bootstrap CI]" in summary and "MedQA (USMLE, 4 options)" in summary
    delta = results["paired"]["medqa"]["adapter-vs-base"]["delta"]
    assert f"MedQA (USMLE, 4 options): adapter-vs-base Δ {100 * delta:+.1f} points [" in summary
    assert f"Results in {tmp_path / 'eval'}: results.json" in summary


def test_an_unreachable_server_leaves_no_output_folder(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    endpoint = EndpointConfig(base_url=f"http://127.0.0.1:{port}", max_attempts=1)
    config = _config(tmp_path, endpoint.base_url, endpoint=endpoint)
    with pytest.raises(EvalError, match=r"connection error.*0 answer\(s\) are kept"):
        main(config)
    assert not (tmp_path / "eval").exists()


def test_a_failure_midway_keeps_the_journal_and_the_rerun_asks_only_the_rest(lora_server, tmp_path, caplog):
    failing = {"count": 0}
    lock = threading.Lock()

    def fault_for(body: dict):
        with lock:
            failing["count"] += 1
            return Fault.status(400, message="prompt too long") if failing["count"] == 10 else None

    lora_server.fault_for = fault_for
    config = _lora_config(tmp_path, lora_server.url)
    config.endpoint.max_concurrency = 1  # the 10th request fails: 9 answers before it
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(EvalError, match=r"HTTP 400: prompt too long.*9 answer\(s\) are kept .*re-run the same command"),
    ):
        main(config)
    folder = tmp_path / "eval"
    assert sorted(p.name for p in folder.iterdir()) == ["answers.jsonl", "answers.seal.json", "run.json", "run.lock"]
    assert "9 answer(s) are kept" in caplog.text

    lora_server.fault_for = None
    lora_server.reset()
    main(config)
    assert lora_server.request_count == 21 - 9


def test_a_failed_in_process_evaluation_removes_what_it_created_and_nothing_else(tmp_path, monkeypatch):
    def broken(model, dtype):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trainer.evaluation.generation, "load_model", broken)
    config = _config(tmp_path, "http://unused", engine="transformers")
    with pytest.raises(RuntimeError, match="out of memory"):
        main(config)
    assert not (tmp_path / "eval").exists()

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        main(config)
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["notes.txt"]


# --- recipes ---------------------------------------------------------------------------------------------


def test_the_endpoint_engine_is_one_override_away_in_every_recipe():
    config = build_eval_config(ROOT / "configs/eval/medical.yaml", ["--engine", "endpoint"])
    assert config.endpoint.base_url.startswith("http://") and config.endpoint.models.adapter == "nanoflux-medical"
    local = build_eval_config(
        ROOT / "configs/eval/local.yaml", ["--engine", "endpoint", "--endpoint.base_url", "http://127.0.0.1:8080"]
    )
    assert local.engine == "endpoint" and local.endpoint.max_concurrency == 256


# --- real models (slow) ----------------------------------------------------------------------------------


def _local(tmp_path: Path, name: str, *extra: str) -> EvalConfig:
    args = ["--adapter", "null", "--compute", "null", "--limit", "2", "--output_dir", str(tmp_path / name), *extra]
    return build_eval_config(ROOT / "configs/eval/local.yaml", args)


@pytest.mark.slow
def test_a_server_running_the_same_transformers_model_gives_identical_scores(
    embedded_model_dir, tmp_path, monkeypatch, allow_loopback_offline
):
    """The identity claim, honestly: the same weights (the packaged SmolLM2 in fp32) behind the endpoint as in-process,
    both answering one question at a time, give the same texts and so the same scores."""
    monkeypatch.chdir(ROOT)
    model, tokenizer = trainer.evaluation.generation.load_model(BASE, "float32")
    lock = threading.Lock()

    def serve(body: dict) -> str:
        with lock:  # one forward pass at a time, as the in-process engine runs them
            return trainer.evaluation.generation.generate(
                model, tokenizer, [_prompt(body)], max_new_tokens=body["max_tokens"], batch_size=1
            )[0]

    in_process = main(_local(tmp_path, "in-process", "--batch_size", "1", "--max_new_tokens", "24"))
    with ScriptedTGI(serve, kind="vllm", model_id=BASE) as server:
        served = main(
            _local(
                tmp_path, "served", "--engine", "endpoint", "--endpoint.base_url", server.url, "--max_new_tokens", "24"
            )
        )
    assert _details(tmp_path / "in-process") == _details(tmp_path / "served")
    assert _scores(in_process) == _scores(served) and in_process["aggregates"] == served["aggregates"]


@pytest.mark.slow
def test_llama_cpp_serving_the_packaged_gguf_agrees_with_the_in_process_engine(
    embedded_model_dir, tmp_path, monkeypatch
):
    """A real llama.cpp server (the Q4_1 GGUF) against the in-process engine (its dequantized fp32 copy): the texts may
    differ, so the agreement of the extracted answers is measured, reported and must be high."""
    from benchmarks.eval_engines import ServerUnavailable, agreement, packaged_llama_server

    monkeypatch.chdir(ROOT)
    in_process = main(_local(tmp_path, "in-process"))
    try:
        with packaged_llama_server() as (url, _):
            served = main(_local(tmp_path, "served", "--engine", "endpoint", "--endpoint.base_url", url))
    except ServerUnavailable as err:
        pytest.skip(str(err))
    found = agreement(tmp_path / "in-process", tmp_path / "served")
    print(
        f"llama.cpp (Q4_1) vs transformers (fp32), {found['questions']} questions: extracted answers agree on "
        f"{found['answer_agreement']:.0%}, texts on {found['text_agreement']:.0%}"
    )
    assert found["questions"] == 12 and served["generation"]["asked"] == 12
    assert served["generation"]["completion_tokens"] > 0 and all(
        r["output"] for rs in _details(tmp_path / "served").values() for r in rs
    )
    assert found["answer_agreement"] >= 0.75, found
    assert set(served["results"]) == set(in_process["results"])


@pytest.mark.slow
def test_the_engine_benchmark_measures_both_engines_on_the_same_questions(embedded_model_dir, tmp_path):
    from benchmarks.eval_engines import ServerUnavailable
    from benchmarks.eval_engines import main as bench

    try:
        record = bench(limit=1, max_new_tokens=8, work_dir=tmp_path)
    except ServerUnavailable as err:
        pytest.skip(str(err))
    for engine in ("transformers", "endpoint"):
        assert (
            record[engine]["questions"] == 6
            and record[engine]["questions_per_s"] > 0
            and len(record[engine]["accuracy"]) == 6
        )
    assert record["agreement"]["questions"] == 6 and record["endpoint_vs_transformers"] > 0
    assert record["settings"]["limit_per_benchmark"] == 1 and record["endpoint"]["http_attempts"] == 6
