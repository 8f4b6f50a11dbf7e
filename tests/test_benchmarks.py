"""The benchmarks' smoke version (`python -m benchmarks.run --smoke`): the real builder against the loopback TGI, the
novelty filter and the training-cost code at tiny sizes. It checks the results files' stable keys and sane values, and
that the throughput check fails for a builder that sends one request at a time.

The throughput part runs the medical and the math recipe (the sandbox on every example) against the simulated
batching server at default builder settings. The distilabel comparison and the CPU LoRA run are `slow` (the first
also needs distilabel installed, which the project does not depend on, so CI skips it); the full benchmark is `make
bench`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.run import PARTS, RESULT_FILES, build_bench_config, format_table, main
from nanoflux.recipe import ConfigError

pytestmark = pytest.mark.usefixtures("allow_loopback_offline")

SLOTS = [8, 32]  # the smoke run's server capacities (the full benchmark: 8, 64 and 256)
# The smoke floor. The full benchmark asks 0.9 of the bound with the server at twice the speed of an 8B model on an
# H100, as the smoke run's server; but the smoke builds are tiny (16-64 examples: the build's fixed costs and the
# round's fill and drain weigh), and the test machine may be loaded, so only a builder that keeps the server far from
# busy (a serialised one, a limit stuck below the slots) falls under it.
MIN_RATIO_TO_BOUND = 0.05


def check_throughput(run: dict) -> None:
    """What the smoke run asks of one build at default settings (AssertionError names the failing figure)."""
    # Most of the slots ran at once (a loaded test machine may keep the builder from sending the last few in time).
    assert run["server_max_running"] >= 0.75 * run["slots"], (
        f"requests running at the server: {run['server_max_running']} of {run['slots']} slots"
    )
    assert run["adaptive_limit"]["peak_limit"] >= run["slots"], (
        f"the adaptive limit peaked at {run['adaptive_limit']['peak_limit']}"
    )
    assert 0 < run["ratio_to_bound"] <= 1.0, f"ratio_to_bound {run['ratio_to_bound']} is not a fraction of the bound"
    assert run["ratio_to_bound"] >= MIN_RATIO_TO_BOUND, (
        f"ratio_to_bound {run['ratio_to_bound']} < {MIN_RATIO_TO_BOUND}: is the builder serialised?"
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run of the throughput and novelty parts; (config, results folder, records)."""
    root = tmp_path_factory.mktemp("bench")
    args = [
        "--smoke",
        "--parts",
        "throughput,novelty",
        "--results_dir",
        str(root / "results"),
        "--work_dir",
        str(root / "work"),
    ]
    config, parts, smoke = build_bench_config(args)
    records = main(config, parts, smoke=smoke)
    return config, root / "results", records


def _read(results, part: str) -> dict:
    return json.loads((results / RESULT_FILES[part]).read_text())


def test_each_part_writes_a_results_file_with_machine_settings_and_figures(smoke):
    _, results, records = smoke
    assert sorted(p.name for p in results.iterdir()) == ["novelty.json", "throughput.json"]
    for record in records:
        saved = _read(results, record["benchmark"])
        assert saved == json.loads(json.dumps(record))
        assert set(saved) == {
            "benchmark",
            "smoke",
            "created_at",
            "duration_s",
            "command",
            "machine",
            "settings",
            "figures",
        }
        assert saved["smoke"] is True and saved["duration_s"] > 0
        machine = saved["machine"]
        assert machine["cpu_count"] >= 1 and machine["python"] and machine["platform"]
        assert machine["packages"]["torch"] and machine["packages"]["nanoflux"]
    table = format_table(records)
    assert table.startswith("| part | figure | value | goal |") and "ratio_to_bound" in table
    assert all(line.count("|") == 5 for line in table.splitlines()), "one row per figure, four columns"


def test_the_builder_at_default_settings_fills_the_batching_server_for_both_recipes(smoke):
    _, results, _ = smoke
    record = _read(results, "throughput")
    figures, settings = record["figures"], record["settings"]
    assert settings["recipes"] == ["configs/medical.yaml", "configs/math.yaml"] and settings["slots"] == SLOTS
    assert [(run["domain"], run["slots"]) for run in figures["runs"]] == [
        ("medical", 8),
        ("medical", 32),
        ("math", 8),
        ("math", 32),
    ]
    for run in figures["runs"]:
        n = run["examples"]
        assert (
            n == max(16, 2 * run["slots"]) and run["max_concurrency"] == 256
        )  # the default: the adaptive limit's ceiling
        # Every example went through all four calls, each judged `ok` (math: the sandbox ran the Judge's program and
        # it printed the reference, else the status is tool_error), with nothing replayed (a fresh build).
        assert run["calls_by_role"] == {"attacker": n, "defender": n, "solver": n, "judge": n}
        assert run["judge_status"]["ok"] == n and run["calls_replayed"] == 0
        assert run["wall_s"] >= run["bound_s"] and run["server_busy_s"] >= run["bound_s"] * 0.999, (
            "no client beats the server's bound"
        )
        assert 0 < run["batch_fill"] <= 1 and 0 < run["cpu_ms_per_example"]
        check_throughput(run)
    assert figures["ratio_to_bound"]["math"]["32"] == figures["runs"][3]["ratio_to_bound"]
    assert figures["goal"]["ratio_to_bound_min"] == 0.9 and figures["goal"]["lowest"] == min(
        r["ratio_to_bound"] for r in figures["runs"]
    )


def test_the_throughput_check_fails_when_the_builder_sends_one_request_at_a_time(tmp_path):
    from benchmarks.batching_server import ServerModel
    from benchmarks.loopback import LoopbackEndpoint
    from benchmarks.throughput import RECIPES, build_config, measure_build

    with LoopbackEndpoint(server=ServerModel(slots=8, speed=8.0)) as endpoint:
        serial = measure_build(
            endpoint,
            build_config(
                RECIPES[0], endpoint.url, tmp_path / "serial", rounds=1, attacks_per_round=8, max_concurrency=1
            ),
        )
    assert serial["server_max_running"] == 1 and serial["calls"] == 32
    with pytest.raises(AssertionError, match="requests running at the server: 1 of 8"):
        check_throughput(serial)
    with pytest.raises(AssertionError, match="serialised"):
        check_throughput(
            {**serial, "server_max_running": 8, "adaptive_limit": {"peak_limit": 8}, "ratio_to_bound": 0.01}
        )


def test_novelty_scaling_reports_time_memory_and_growth_per_bank_size(smoke):
    _, results, _ = smoke
    figures = _read(results, "novelty")["figures"]
    assert [run["bank_size"] for run in figures["runs"]] == [200, 2000]
    for run in figures["runs"]:
        assert run["novel"] == run["candidates"] == 100  # random unit vectors are nearly orthogonal: all novel
        assert run["ms_per_candidate"] > 0 and run["peak_mb"] >= run["bank_mb"] > 0
    assert figures["runs"][1]["matrix_mb"] > figures["runs"][0]["matrix_mb"]
    assert isinstance(figures["growth_exponent"], float)
    embedding = figures["embedding"]
    assert embedding["texts"] == 16 and embedding["texts_per_s"] > 0 and embedding["dimension"] == 384
    assert embedding["resolved"].startswith("packaged")


def test_the_batched_novelty_check_decides_exactly_like_one_candidate_at_a_time(monkeypatch):
    """NoveltyFilter.check compares a batch to the earlier rows in one matrix product (in blocks); it must decide
    exactly what comparing each candidate in turn would, near-duplicates within the batch included."""
    import builder.novelty as novelty

    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 32)).astype(np.float32)
    near = base[rng.integers(0, 40, 60)] + 0.05 * rng.standard_normal((60, 32)).astype(np.float32)
    candidates = np.concatenate([base[:20], near, base[20:]])[rng.permutation(100)]
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    bank = base[:5] / np.linalg.norm(base[:5], axis=1, keepdims=True)

    accepted, expected = list(bank), []
    for vector in candidates:
        nearest = max(float(a @ vector) for a in accepted)
        expected.append((nearest < 0.88, nearest))
        if nearest < 0.88:
            accepted.append(vector)
    assert 10 < sum(not novel for novel, _ in expected) < 90, "the data has both duplicates and novel questions"

    monkeypatch.setattr(novelty, "BLOCK_ELEMENTS", 64)  # several blocks per batch
    for chunk in (100, 8, 1):
        f = novelty.NoveltyFilter(0.88, bank=bank)
        decisions = [d for i in range(0, 100, chunk) for d in f.check(candidates[i : i + chunk])]
        assert [d.novel for d in decisions] == [novel for novel, _ in expected]
        assert [d.nearest_similarity for d in decisions] == pytest.approx([s for _, s in expected], abs=1e-5)
        assert f.size == len(accepted)


def test_journal_writes_from_the_event_loop_share_fsyncs_and_lose_nothing(tmp_path, monkeypatch):
    """The build journals through `Journal.aput` (off the event loop, group commit): what the throughput fix relies
    on."""
    import asyncio
    import time

    import nanoflux.journal as journal

    synced = []

    def slow_fsync(fd: int) -> None:  # a disk where an fsync takes 5 ms
        time.sleep(0.005)
        synced.append(fd)

    monkeypatch.setattr(journal.os, "fsync", slow_fsync)
    log = journal.Journal(tmp_path / "calls.jsonl")

    async def write_all() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(log.aput({"key": f"k{i}", "text": "x" * i}) for i in range(100)))
        return time.perf_counter() - started

    elapsed = asyncio.run(write_all())
    log.close()
    assert len(synced) < 60 and elapsed < 100 * 0.005, (
        f"{len(synced)} fsyncs for 100 concurrent records: they must share"
    )
    reopened = journal.Journal(tmp_path / "calls.jsonl")
    assert len(reopened) == 100 and reopened.get("k42")["text"] == "x" * 42
    reopened.close()


def test_flops_per_token_of_the_written_out_qwen3_4b_match_its_parameter_count():
    from benchmarks.training_cost import QWEN3_4B, forward_flops_per_token, qwen3_config

    config = qwen3_config(QWEN3_4B)
    matmul_flops = forward_flops_per_token(config, seq_len=0)
    # Qwen3-4B: 4.02B parameters, of which the tied 151936 x 2560 embedding is also the lm_head (a matmul per token).
    assert matmul_flops == pytest.approx(2 * 4.022e9, rel=0.01)
    assert forward_flops_per_token(config, seq_len=2048) - matmul_flops == 4 * 36 * 2048 * 32 * 128


def test_unknown_parts_and_fields_fail_before_anything_runs():
    with pytest.raises(ConfigError, match=r"--parts: unknown part\(s\) \['speed'\]"):
        build_bench_config(["--parts", "throughput,speed"])
    with pytest.raises(ConfigError, match="did you mean `throughput.speed`"):
        build_bench_config(["--throughput.sped", "0.1"])
    with pytest.raises(ConfigError, match="throughput.slots"):
        build_bench_config(["--throughput.slots", "[0]"])
    with pytest.raises(ConfigError, match="distilabel.examples"):
        build_bench_config(["--distilabel.examples", "999", "--distilabel.rounds", "2"])
    config, parts, smoke = build_bench_config([])
    assert parts == list(PARTS) and not smoke and config.throughput.slots == [8, 64, 256]
    assert (
        config.distilabel.examples >= 1000
        and config.distilabel.repeats == 3
        and config.distilabel.server_model().slots >= 64
    )


@pytest.mark.slow
def test_training_cost_runs_the_local_recipe_and_the_gpu_code_and_counts_the_compute_ratio(tmp_path):
    import torch

    args = [
        "--smoke",
        "--parts",
        "training",
        "--training.cpu_steps",
        "1",
        "--training.gpu_result",
        "null",
        "--results_dir",
        str(tmp_path / "results"),
        "--work_dir",
        str(tmp_path / "work"),
    ]
    config, parts, smoke = build_bench_config(args)
    main(config, parts, smoke=smoke)
    figures = _read(tmp_path / "results", "training")["figures"]
    cpu = figures["cpu"]
    assert cpu["steps"] == 1 and cpu["train_tokens"] > 0 and cpu["tokens_per_s"] > 0
    assert cpu["peak_rss_mb"] > cpu["rss_before_training_mb"] > 0 and cpu["recipe"] == "configs/train/local.yaml"
    gpu = figures["gpu"]
    assert gpu["model"]["parameters"] == 4_022_468_096  # Qwen3-4B, built on the meta device
    if torch.cuda.is_available():
        assert gpu["skipped"] is False and gpu["tokens_per_s"] > 0 and gpu["peak_memory_gb"] > 8
        assert figures["gpu_seconds"]["nanoflux"]["packed_s"] > 0
    else:
        assert gpu["skipped"] is True and "torch.cuda.is_available() is False" in gpu["reason"]
        check = gpu["code_path_check"]
        assert check["tokens_per_s"] > 0 and 0 < check["trainable_parameters"] < check["parameters"]
        assert check["lora"]["target_modules"] == [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        assert [(run["batch_size"], run["seq_len"]) for run in check["shapes"]] == [(2, 64), (2, 32)]
        assert figures["gpu_seconds"] == {"skipped": True, "reason": "no GPU measurement"}
    check_compute_ratio(figures["compute_ratio"])


def check_compute_ratio(ratio: dict) -> None:
    """The offline estimate: every baseline's real training split (documented rows less the dev holdout x fixture
    tokens per row), the ratios consistent with the token counts, MultiMedQA the sum of its three baselines."""
    from benchmarks.training_cost import FULL_SETS

    assert ratio["estimate"] is True and ratio["nanoflux"]["rows"] == 200
    sets = {s["name"]: s for s in ratio["full_sets"]}
    assert set(sets) == {"gsm_hard", "genome_bench", "medqa", "medmcqa", "pubmedqa"}
    assert {name: s["rows"] for name, s in sets.items()} == {
        "gsm_hard": 7473 - 500,
        "genome_bench": 3332,
        "medqa": 10178 - 500,
        "medmcqa": 182822 - 500,
        "pubmedqa": 211269,
    }
    assert [entry["name"] for entry in FULL_SETS if not entry["baseline"]] == ["genome_bench"] and sets[
        "genome_bench"
    ]["baseline"] is False
    # Targets carry the benchmark's reasoning where it has one (MedQA has none).
    assert {name: s["targets"] for name, s in sets.items()} == {
        "gsm_hard": "reasoning",
        "genome_bench": "reasoning",
        "medqa": "answer_only",
        "medmcqa": "reasoning",
        "pubmedqa": "reasoning",
    }
    for entry in ratio["full_sets"]:
        assert entry["tokens"] == pytest.approx(entry["tokens_per_row"] * entry["rows"], rel=1e-3)
        assert (
            entry["ratio"] == pytest.approx(entry["tokens"] / ratio["nanoflux"]["tokens"], rel=0.01)
            and entry["ratio"] > 1
        )
        assert entry["method"].startswith("estimate:")
    assert "openai/gsm8k main train" in sets["gsm_hard"]["method"] and "pqa_artificial" in sets["pubmedqa"]["method"]
    medical = ratio["multimedqa"]
    assert medical["tokens"] == sum(sets[name]["tokens"] for name in ("medqa", "medmcqa", "pubmedqa"))
    assert medical["ratio"] == pytest.approx(medical["tokens"] / ratio["nanoflux"]["tokens"], rel=0.01)


def test_the_full_sets_are_the_baselines_training_splits_never_a_test_set():
    from benchmarks.training_cost import FULL_SETS
    from nanoflux.benchmarks import BenchmarkConfig
    from trainer.baseline import check_baseline_source

    for entry in FULL_SETS:
        hub = entry["hub"]
        bench = BenchmarkConfig(format=entry["format"], path=hub["path"], subset=hub.get("subset"), split=hub["split"])
        bench.validate(entry["name"])
        if entry["baseline"]:
            check_baseline_source(bench)  # raises for a split nanoflux eval scores
        else:
            with pytest.raises(ConfigError, match="training on it would train on evaluation rows"):
                check_baseline_source(bench)
    by_name = {entry["name"]: entry for entry in FULL_SETS}
    assert by_name["gsm_hard"]["hub"] == {"path": "openai/gsm8k", "subset": "main", "split": "train"}
    assert by_name["pubmedqa"]["hub"] == {"path": "qiaojin/PubMedQA", "subset": "pqa_artificial", "split": "train"}


def test_the_gpu_path_reads_the_recipe_without_the_training_stack_exactly_as_the_trainer_does(monkeypatch):
    import builtins

    from benchmarks.training_cost import GPU_RECIPE, read_lora_recipe

    resolved = read_lora_recipe(str(GPU_RECIPE))
    assert resolved.resolved_by == "trainer.train_config.build_train_config"
    real_import = builtins.__import__

    def no_trainer(name, *args, **kwargs):
        if name == "trainer.train_config":
            raise ModuleNotFoundError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trainer)
    from_yaml = read_lora_recipe(str(GPU_RECIPE))
    assert from_yaml.resolved_by.startswith("the recipe's YAML")
    assert {k: v for k, v in vars(from_yaml).items() if k != "resolved_by"} == {
        k: v for k, v in vars(resolved).items() if k != "resolved_by"
    }
    assert (resolved.per_device_train_batch_size, resolved.max_length, resolved.lora_r, resolved.bf16) == (
        4,
        2048,
        16,
        True,
    )


def test_without_a_gpu_the_stored_gpu_record_is_reported_as_measured_elsewhere_with_gpu_seconds(tmp_path):
    import torch

    from benchmarks.training_cost import GPU_RESULT, TrainingCostConfig, gpu_seconds, measure_gpu

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: it is measured, not read")
    stored = json.loads(GPU_RESULT.read_text())
    assert stored["benchmark"] == "training-gpu" and stored["figures"]["gpu"]["skipped"] is False
    gpu = measure_gpu(TrainingCostConfig(tiny_steps=0, gpu_result=str(GPU_RESULT)))
    assert gpu["measured_here"] is False and gpu["skipped"] is False and "not on this machine" in gpu["source"]
    assert (
        gpu["tokens_per_s"] > 0
        and gpu["mfu"] > 0
        and gpu["parameters"] == 4_022_468_096
        and "code_path_check" not in gpu
    )
    assert measure_gpu(TrainingCostConfig(tiny_steps=0, gpu_result=str(tmp_path / "none.json")))["skipped"] is True
    # GPU-seconds: packed = tokens / tokens/s at the recipe's shape; unpacked = batches x s per micro-batch.
    shapes = [
        {"batch_size": 4, "seq_len": 2048, "tokens_per_s": 8000.0, "s_per_micro_step": 1.024},
        {"batch_size": 4, "seq_len": 256, "tokens_per_s": 2000.0, "s_per_micro_step": 0.5},
    ]
    ratio = {
        "estimate": True,
        "nanoflux": {"rows": 200, "tokens": 40000, "tokens_per_row": 200.0},
        "full_sets": [
            {
                "name": "medqa",
                "title": "MedQA",
                "baseline": True,
                "rows": 1001,
                "tokens": 800000,
                "tokens_per_row": 800.0,
            }
        ],
    }
    cost = gpu_seconds({"gpu": "X", "shapes": shapes}, ratio)
    assert cost["nanoflux"] == {
        "rows": 200,
        "tokens": 40000,
        "packed_s": 5.0,
        "unpacked_s": 25.0,
        "unpacked_shape": "4x256",
    }
    medqa = cost["full_sets"][
        0
    ]  # rows of 800 tokens do not fit 256: the recipe's 2048 is the shortest that holds them
    assert (medqa["packed_s"], medqa["unpacked_s"], medqa["unpacked_shape"]) == (
        100.0,
        round(251 * 1.024, 1),
        "4x2048",
    )
    assert cost["multimedqa"]["packed_s"] == 100.0 and "estimate" in cost["method"]


@pytest.mark.slow
def test_distilabel_runs_the_same_workload_against_the_same_server(tmp_path):
    args = [
        "--parts",
        "distilabel",
        "--distilabel.examples",
        "16",
        "--distilabel.rounds",
        "1",
        "--distilabel.repeats",
        "2",
        "--distilabel.slots",
        "16",
        "--distilabel.speed",
        "8",
        "--results_dir",
        str(tmp_path / "results"),
        "--work_dir",
        str(tmp_path / "work"),
    ]
    config, parts, smoke = build_bench_config(args)
    main(config, parts, smoke=smoke)
    record = _read(tmp_path / "results", "distilabel")
    figures, settings = record["figures"], record["settings"]
    nanoflux, distilabel = figures["nanoflux"], figures["distilabel"]
    assert len(nanoflux["runs"]) == len(distilabel["runs"]) == 2
    for ours, theirs in zip(nanoflux["runs"], distilabel["runs"], strict=True):
        # The server saw the same calls per role from both, so both had exactly the same work to wait for.
        assert (
            ours["calls_by_role"]
            == theirs["calls_by_role"]
            == {"attacker": 16, "defender": 16, "solver": 16, "judge": 16}
        )
        assert ours["completion_tokens"] == theirs["completion_tokens"]
        # NanoFlux's verdict prompts also carry its judge tools' results (corpus lookup): a little more prefill.
        assert theirs["bound_s"] <= ours["bound_s"] <= 1.15 * theirs["bound_s"]
        assert theirs["examples"] == 16 and 0 < theirs["ratio_to_bound"] <= 1.0
    walls = [run["wall_s"] for run in distilabel["runs"]]
    assert distilabel["wall_s"] == {
        "median": pytest.approx(sum(walls) / 2, abs=1e-3),
        "min": min(walls),
        "max": max(walls),
    }
    assert figures["vs_distilabel"] == pytest.approx(
        nanoflux["wall_s"]["median"] / distilabel["wall_s"]["median"], abs=1e-3
    )
    assert settings["distilabel_input_batch_size"] == 16 and "novelty filter" in settings["not_in_distilabel"]


@pytest.mark.slow
def test_the_gpu_entry_point_writes_a_record_that_the_training_part_reads(tmp_path):
    from benchmarks.gpu_training import run
    from benchmarks.training_cost import TrainingCostConfig, stored_gpu_result

    overrides = [
        "--training.gpu_steps",
        "1",
        "--training.gpu_warmup_steps",
        "0",
        "--training.gpu_short_seq_lens",
        "[32]",
    ]
    record = run(tmp_path / "gpu.json", overrides, tiny=True)  # the GPU code on a tiny Qwen3 on CPU
    gpu = record["figures"]["gpu"]
    assert record["benchmark"] == "training-gpu" and record["settings"]["gpu_steps"] == 1
    assert [(r["batch_size"], r["seq_len"]) for r in gpu["shapes"]] == [(4, 2048), (4, 32)] and gpu[
        "gradient_accumulation_steps"
    ] == 4
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 1 for r in gpu["shapes"])
    assert set(record["machine"]["packages"]) >= {"torch", "transformers", "peft", "trl"}
    stored = stored_gpu_result(str(tmp_path / "gpu.json"))
    assert stored["measured_here"] is False and stored["tokens_per_s"] == gpu["tokens_per_s"]
    assert TrainingCostConfig().gpu_result.endswith("benchmarks/results/training_gpu.json")
