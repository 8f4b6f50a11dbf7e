"""The method, end to end on scripted endpoints: feedback about the player being attacked, targets that follow its
failures, an independent tool-first Judge, and curation that never ranks a format failure as a hard question."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder import build
from builder.config import BuildConfig, CurationConfig
from builder.curation import curate
from builder.roles import load_prompts
from nanoflux.recipe import ConfigError, from_dict, to_dict
from tests.tgi_server import ScriptedTGI

pytestmark = pytest.mark.usefixtures("allow_loopback_offline")

CAPABILITIES = ["cardiology", "pharmacology", "nephrology"]
LOCAL_BENCHMARKS = {"eval_recipe": "configs/eval/local.yaml", "ngram": 13}  # the offline fixtures
SCORES = {"clinical_accuracy": 4, "multi_hop": 4, "annotation": 4}
# Distinct stems, so that nothing is dropped as a near-duplicate (the novelty threshold is 1.0 here as well).
TOPICS = [
    "a febrile infant",
    "an elderly smoker",
    "a marathon runner",
    "a pregnant woman",
    "a child with a rash",
    "a farmer",
    "a night-shift nurse",
    "a college athlete",
    "a diver",
    "a long-haul pilot",
    "a retired miner",
    "a baker",
    "a violinist",
    "a dialysis patient",
    "a new mother",
    "a climber at altitude",
    "a chef",
    "a teacher",
]


def _role(body: dict) -> tuple[str, str, str]:
    return (
        body["model"],
        body["messages"][0]["content"],
        body["messages"][1]["content"],
    )  # a re-ask adds turns after these


def _question(user: str) -> str:
    return user.split("\n\nA. ")[0].strip()


class TwoPlayers:
    """Two players that write distinguishable questions (`written by <model>`); player B, as Defender, gets every
    pharmacology question wrong and every other one right; the Judge solves blind to the reference."""

    def __init__(self) -> None:
        self.references: dict[str, str] = {}
        self.count = 0

    def __call__(self, body: dict) -> str:
        model, system, user = _role(body)
        if "You are the Attacker" in system:
            skill = re.search(r"Target reasoning skill: (.*)", user).group(1).strip()
            self.count += 1
            question = (
                f"Q{self.count} written by {model}: {skill} in {TOPICS[self.count % len(TOPICS)]}, case {self.count}?"
            )
            reference = "ABCDE"[self.count % 5]
            self.references[question] = f"{reference}|{skill}"
            return json.dumps(
                {
                    "question": question,
                    "options": ["w", "x", "y", "z", "v"],
                    "explanation": "1. step",
                    "reference_answer": reference,
                }
            )
        question = _question(user.split("QUESTION:\n")[-1])
        reference, skill = self.references[question].split("|")
        if "You are the Defender" in system:
            wrong = model == "scripted/player-b" and skill == "pharmacology"
            answer = "ABCDE"[("ABCDE".index(reference) + 1) % 5] if wrong else reference
            return json.dumps({"reasoning": "reasoned", "answer": answer})
        if "REFERENCE ANSWER" not in user:
            return json.dumps({"reasoning": "blind", "program": "", "answer": reference})
        return json.dumps(
            {
                "rationale": f"Judge on {question[:3]}",
                "question_valid": True,
                "reference_correct": True,
                "own_error": "",
                "defender_correct": True,
                **SCORES,
                "complexity": 3,
            }
        )


def _recipe(url: str, out: Path, **changes) -> BuildConfig:
    role = {"base_url": url, "max_tokens": 256, "timeout": 2.0}
    data = {
        "domain": "medical",
        "capabilities": CAPABILITIES,
        "complexity_levels": [2, 3],
        "rounds": 3,
        "attacks_per_round": 6,
        "judge_tools": ["lookup"],
        "player_a": {**role, "model": "scripted/player-a"},
        "player_b": {**role, "model": "scripted/player-b"},
        "judge": {**role, "model": "scripted/judge", "temperature": 0.0},
        "novelty": {"threshold": 1.0},
        "decontamination": LOCAL_BENCHMARKS,
        "output_dir": str(out),
        **changes,
    }
    config = from_dict(BuildConfig, data)
    config.validate()
    return config


def _attacker_prompts(server: ScriptedTGI) -> list[tuple[str, str]]:
    return [
        (r.json["model"], r.json["messages"][1]["content"])
        for r in server.chat_requests
        if "You are the Attacker" in r.json["messages"][0]["content"]
    ]


def test_the_attacker_sees_only_the_current_defenders_results_and_targets_its_weakest_capability(tmp_path):
    players = TwoPlayers()
    with ScriptedTGI(responder=players) as server:
        summary = build.main(_recipe(server.url, tmp_path / "out"))
        prompts = _attacker_prompts(server)
    rows = [json.loads(line) for line in (tmp_path / "out" / "pool.jsonl").read_text().splitlines()]

    # Roles swap every round.
    assert [(r["round"], r["attacker"], r["defender"]) for r in rows if r["attack_index"] == 0] == [
        (0, "player_a", "player_b"),
        (1, "player_b", "player_a"),
        (2, "player_a", "player_b"),
    ]
    by_round = [prompts[0:6], prompts[6:12], prompts[12:18]]
    assert {model for model, _ in by_round[0] + by_round[2]} == {"scripted/player-a"}
    assert {model for model, _ in by_round[1]} == {"scripted/player-b"}
    # Rounds 0 and 1: the Defender has not defended before, so there is nothing to feed back.
    assert not any("Defender you face" in prompt for _, prompt in by_round[0] + by_round[1])
    # Round 2: player A attacks B again and sees B's answers from round 0 (questions A wrote), never its own answers
    # from round 1 (questions B wrote), with B's answer, the reference and the Judge's rationale.
    for _, prompt in by_round[2]:
        assert "Defender you face" in prompt and "written by scripted/player-b" not in prompt
        assert "written by scripted/player-a" in prompt and "Defender answered:" in prompt and "reference:" in prompt
        assert "Judge: Judge on Q" in prompt
    failed = [r for r in rows if r["round"] == 0 and r["defender_correct"] is False]
    assert failed and all(r["capability"] == "pharmacology" for r in failed)
    feedback = by_round[2][0][1].split("Defender you face")[1].splitlines()
    assert feedback[1].startswith("- [FAILED, pharmacology]"), "failures are listed first"

    # Targets follow the Defender's failures: B fails every pharmacology question, so round 2 asks for more of them.
    targets = [r["targets"] for r in summary["per_round"]]
    assert targets[0] == {"cardiology": 2, "pharmacology": 2, "nephrology": 2}
    assert targets[2]["pharmacology"] > max(targets[2]["cardiology"], targets[2]["nephrology"])
    assert sum(targets[2].values()) == 6 and min(targets[2].values()) >= 1, "exploration keeps every capability probed"


def test_adaptive_targets_are_reproducible_on_resume(tmp_path):
    with ScriptedTGI(responder=TwoPlayers()) as server:
        first = build.main(_recipe(server.url, tmp_path / "out"))
        sent = server.request_count
        again = build.main(_recipe(server.url, tmp_path / "out"))  # targets drawn from the replayed rounds again
        assert server.request_count == sent and again["calls_replayed"] == first["calls_sent"]
    assert [r["targets"] for r in again["per_round"]] == [r["targets"] for r in first["per_round"]]


def test_a_shared_judge_is_refused_unless_explicitly_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"judge: the Judge is the same model as player_a.*allow_shared_judge"):
        _recipe("http://127.0.0.1:9", tmp_path, judge={"base_url": "http://127.0.0.1:9", "model": "scripted/player-a"})
    config = _recipe(
        "http://127.0.0.1:9",
        tmp_path,
        judge={"base_url": "http://127.0.0.1:9", "model": "scripted/player-a"},
        allow_shared_judge=True,
    )
    assert config.allow_shared_judge


# --- math: the Judge's own program decides ------------------------------------------------------------------

MATH = {  # question -> (reference, the Judge's blind program, the Judge LLM's verdict on the reference)
    "A depot ships 123457 crates a day for 9 days. How many crates?": (
        "1111113",
        "print(123457 * 9)",
        False,
    ),  # tool confirms
    "A farm grows 7919 rows of 311 plants. How many plants?": (
        "2462810",
        "print(7919 * 311)",
        True,
    ),  # tool refutes (2462809)
    "A tank holds 640000 litres and leaks 1 litre an hour. What is left after a day?": (
        "about half",
        "print(640000 - 24)",
        True,
    ),
    "A train runs 1234567 metres at 11 metres a second. How many seconds, to the nearest second?": (
        "112233",
        "raise SystemExit(3)",
        True,
    ),
}
MATH_CAPABILITIES = ["multi-step arithmetic", "rates", "percentages", "unit conversions"]


def _math_responder(body: dict) -> str:
    model, system, user = _role(body)
    if "You are the Attacker" in system:
        skill = re.search(r"Target reasoning skill: (.*)", user).group(1).strip()
        question = list(MATH)[MATH_CAPABILITIES.index(skill)]
        return json.dumps({"question": question, "explanation": "1. multiply", "reference_answer": MATH[question][0]})
    question = next(q for q in MATH if q in user)
    reference, program, says_right = MATH[question]
    if "You are the Defender" in system:
        return json.dumps({"reasoning": "computed", "answer": reference})
    if "REFERENCE ANSWER" not in user:
        return json.dumps({"reasoning": "wrote a program", "program": program, "answer": "0"})
    return json.dumps(
        {
            "rationale": "checked",
            "question_valid": True,
            "reference_correct": says_right,
            "own_error": "",
            "defender_correct": True,
            "correctness": 4,
            "multi_hop": 4,
            "annotation": 4,
            "complexity": 3,
        }
    )


def test_math_validity_is_decided_by_the_judges_program_not_by_the_llm(tmp_path):
    with ScriptedTGI(responder=_math_responder) as server:
        role = {"base_url": server.url, "max_tokens": 256, "timeout": 2.0}
        config = from_dict(
            BuildConfig,
            {
                "domain": "math",
                "answer_format": "number",
                "capabilities": MATH_CAPABILITIES,
                "complexity_levels": [3],
                "rounds": 1,
                "attacks_per_round": 4,
                "targeting": "round_robin",
                "judge_tools": ["python"],
                "player_a": {**role, "model": "p-a"},
                "player_b": {**role, "model": "p-b"},
                "judge": {**role, "model": "j", "temperature": 0.0},
                "sandbox": {"wall_seconds": 20.0},
                "decontamination": LOCAL_BENCHMARKS,
                "output_dir": str(tmp_path / "math"),
            },
        )
        config.validate()
        rubric = {c.name for c in load_prompts("math").rubric.quality}
        assert rubric == {"correctness", "multi_hop", "annotation"}, "the responder scores the math rubric"
        build.main(config)
    rows = {r["question"]: r for r in map(json.loads, (tmp_path / "math" / "pool.jsonl").read_text().splitlines())}
    confirmed, refuted, wordy, crashed = (rows[q] for q in MATH)
    # The Judge LLM called the reference wrong, but its own program computed it: the tool wins.
    assert (confirmed["question_valid"], confirmed["validity_decided_by"], confirmed["reference_verified"]) == (
        True,
        "python",
        True,
    )
    assert confirmed["judge_reference_correct"] is False and confirmed["verification_code"] == "print(123457 * 9)"
    # The LLM called it right, the program says 2462809: off by one on a large number is wrong.
    assert (refuted["question_valid"], refuted["validity_decided_by"], refuted["reference_verified"]) == (
        False,
        "python",
        False,
    )
    # A non-numeric reference is invalid for answer_format: number, whatever anyone says.
    assert (wordy["question_valid"], wordy["validity_decided_by"]) == (False, "format")
    # A program that fails leaves nothing to verify with: the example is a tool error, not a verdict.
    assert crashed["judge_status"] == "tool_error" and "verification program" in crashed["error"]


# --- the Judge's scores and the Defender's format failures -----------------------------------------------------


def test_an_out_of_range_score_is_asked_again_with_the_reason_and_a_format_failure_is_never_ranked_failed(tmp_path):
    def responder(body: dict) -> str:
        model, system, user = _role(body)
        if "You are the Attacker" in system:
            skill = re.search(r"Target reasoning skill: (.*)", user).group(1).strip()
            return json.dumps(
                {
                    "question": f"Which finding fits {skill} best?",
                    "options": list("vwxyz"),
                    "explanation": "1. x",
                    "reference_answer": "C",
                }
            )
        if "You are the Defender" in system:  # nephrology: prose with no answer at all
            return (
                "I think it is probably something renal."
                if "nephrology" in user
                else json.dumps({"reasoning": "r", "answer": "A"})
            )
        if "REFERENCE ANSWER" not in user:
            return json.dumps({"reasoning": "blind", "program": "", "answer": "C"})
        retried = "cannot be used" in body["messages"][-1]["content"]
        score = 4 if retried else 10  # a 10 first: outside the rubric's 1-5
        return json.dumps(
            {
                "rationale": "r",
                "question_valid": True,
                "reference_correct": True,
                "own_error": "",
                "defender_correct": False,
                **dict.fromkeys(SCORES, score),
                "complexity": 3,
            }
        )

    with ScriptedTGI(responder=responder) as server:
        config = _recipe(
            server.url, tmp_path / "out", rounds=1, attacks_per_round=3, targeting="round_robin", complexity_levels=[3]
        )
        summary = build.main(config)
        retries = [
            (_role(r.json)[1][:20], r.json["messages"][-1]["content"])
            for r in server.chat_requests
            if len(r.json["messages"]) == 4
        ]
    judge_retries = [text for system, text in retries if system.startswith("You are the Judge")]
    assert len(judge_retries) == 3 and all(
        '"clinical_accuracy" is 10, outside the rubric\'s 1-5 range' in t for t in judge_retries
    )
    assert [text for system, text in retries if system.startswith("You are the Defender")] == [
        "That reply cannot be used: the reply holds no JSON object. Reply again with the corrected JSON object only."
    ]
    assert summary["judge_status"]["ok"] == 3 and summary["judge_status"]["parse_error"] == 0
    assert summary["defender_status"]["unparseable"] == 1

    rows = [json.loads(line) for line in (tmp_path / "out" / "pool.jsonl").read_text().splitlines()]
    silent = next(r for r in rows if r["capability"] == "nephrology")
    assert (silent["defender_status"], silent["defender_correct"], silent["defender_answer"]) == (
        "unparseable",
        None,
        None,
    )
    curated = curate(rows, CurationConfig(quality_levels=[4], target_size=3))
    assert [r["capability"] for r in curated][-1] == "nephrology", (
        "a format failure ranks after real failures and solves"
    )
    assert [r["defender_correct"] for r in curated] == [False, False, None]


# --- decontamination in the build -----------------------------------------------------------------------------


def test_a_question_copied_from_an_evaluation_benchmark_is_dropped_counted_and_listed(tmp_path):
    benchmark = json.loads(Path("samples/benchmarks/medqa.jsonl").read_text().splitlines()[0])

    def responder(body: dict) -> str:
        model, system, user = _role(body)
        if "You are the Attacker" in system:
            skill = re.search(r"Target reasoning skill: (.*)", user).group(1).strip()
            copied = skill == "nephrology"  # the MedQA fixture's pyelonephritis vignette, word for word
            question = (
                benchmark["question"]
                if copied
                else f"Which drug best fits a {skill} case in {TOPICS[len(skill) % 18]}?"
            )
            options = list(benchmark["options"].values()) if copied else list("wxyz")
            return json.dumps(
                {"question": question, "options": options, "explanation": "1. x", "reference_answer": "B"}
            )
        if "You are the Defender" in system:
            return json.dumps({"reasoning": "r", "answer": "A"})
        if "REFERENCE ANSWER" not in user:
            return json.dumps({"reasoning": "blind", "program": "", "answer": "B"})
        return json.dumps(
            {
                "rationale": "r",
                "question_valid": True,
                "reference_correct": True,
                "own_error": "",
                "defender_correct": False,
                **SCORES,
                "complexity": 3,
            }
        )

    with ScriptedTGI(responder=responder) as server:
        config = _recipe(
            server.url,
            tmp_path / "out",
            rounds=1,
            attacks_per_round=3,
            targeting="round_robin",
            complexity_levels=[3],
            options=4,
        )
        summary = build.main(config)
    found = summary["decontamination"]
    assert found["checked"] and found["rows_checked"] == 3 and found["contaminated"]["rows"] == 1
    assert found["contaminated"]["by_benchmark"] == {"medqa": 1} and "ngram" in found["contaminated"]["by_detector"]
    assert summary["kept"] == 2
    kept = [json.loads(line)["capability"] for line in (tmp_path / "out" / "curated.jsonl").read_text().splitlines()]
    assert "nephrology" not in kept
    (listed,) = [json.loads(line) for line in (tmp_path / "out" / "contaminated.jsonl").read_text().splitlines()]
    assert listed["question"] == benchmark["question"] and listed["contamination"][0]["benchmark"] == "medqa"


# --- honest failures ------------------------------------------------------------------------------------------


def test_a_build_whose_attacks_fail_exits_non_zero_with_the_role_model_and_cause(tmp_path, capsys):
    from builder.build import BuildError
    from nanoflux.cli import main as nanoflux

    with ScriptedTGI(responder=lambda body: "I would rather write a poem.") as server:
        config = _recipe(server.url, tmp_path / "out", rounds=1, attacks_per_round=2, parse_retries=0)
        with pytest.raises(
            BuildError,
            match=r"2 of 2 attacks failed .*the Attacker \(player_a, scripted/player-a @ http://127\.0\.0\.1:\d+/?\): "
            r"unparseable answer: the reply holds no JSON object.*Fix: ",
        ):
            build.main(config)
        assert json.loads((tmp_path / "out" / "summary.json").read_text())["attack_parse_errors"] == 2, (
            "the summary is still written"
        )

        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(json.dumps({**to_dict(config), "output_dir": str(tmp_path / "cli")}))  # JSON is YAML
        with pytest.raises(SystemExit) as exit_info:
            nanoflux(["build", "--config", str(recipe)])
    assert str(exit_info.value).startswith("nanoflux build: 2 of 2 attacks failed")


def test_a_build_that_keeps_nothing_says_why_and_how_to_recurate(tmp_path):
    from builder.build import BuildError

    with ScriptedTGI(responder=TwoPlayers()) as server:
        config = _recipe(server.url, tmp_path / "out", rounds=1, attacks_per_round=2, curation={"quality_levels": [1]})
        with pytest.raises(
            BuildError,
            match=r"nothing was kept: 2 generated, 0 near-duplicates .*, 2 judged, 2 valid.*re-curating sends no call",
        ):
            build.main(config)
