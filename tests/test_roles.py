import json

import pytest

from builder import roles
from builder.roles import (
    Rejected,
    extract_json,
    load_prompts,
    normalize_choice,
    parse_attack,
    parse_defense,
    parse_solution,
    parse_verdict,
    quality_level,
)

RUBRIC = load_prompts("medical").rubric


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure! ```json\n{"a": "x}{"}\n``` hope it helps', {"a": "x}{"}),
        ('{"a": [1, 2,],}', {"a": [1, 2]}),
        ('noise {not json} then {"b": {"c": true}} tail', {"b": {"c": True}}),
        ('{"a": 1', None),
        ("no json at all", None),
        ("[1, 2]", None),
    ],
)
def test_extract_json_is_tolerant_and_returns_none_on_garbage(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize(
    "value, letter",
    [
        ("B", "B"),
        ("(c)", "C"),
        ("D) Aspirin", "D"),
        ("Option e", "E"),
        ("a.", "A"),
        ("Because", None),
        ("F", None),
        (None, None),
    ],
)
def test_normalize_choice_reads_option_letters(value, letter):
    assert normalize_choice(value) == letter


def test_parse_attack_requires_question_options_explanation_and_answer():
    good = {"question": "Q?", "options": ["x", "y", "z"], "explanation": "1. fact", "reference_answer": "(b)"}
    attack = parse_attack(json.dumps(good), "choice", 3)
    assert (attack.question, attack.options, attack.reference_answer) == ("Q?", ["x", "y", "z"], "B")
    assert parse_attack(json.dumps({**good, "question": "  "}), "choice", 3) == Rejected(
        '"question" is missing or empty'
    )
    assert "must be one letter A-C" in parse_attack(json.dumps({**good, "reference_answer": "D"}), "choice", 3).reason
    assert "exactly 4 option texts (got 3)" in parse_attack(json.dumps(good), "choice", 4).reason
    numeric = parse_attack(json.dumps({**good, "reference_answer": 42}), "number")
    assert numeric.reference_answer == "42" and numeric.options == []


@pytest.mark.parametrize(
    "options, stem, texts",
    [
        ({"A": "x", "B": "y"}, "Q?", ["x", "y"]),  # a mapping
        (["A. x", "(B) y"], "Q?", ["x", "y"]),  # letters written into the texts
        (None, "Q?", ["x", "y"]),  # inline in the question: "Q? (A) x (B) y"
    ],
)
def test_parse_attack_reads_options_in_the_shapes_models_write_them(options, stem, texts):
    data = {"question": "Q? (A) x (B) y" if options is None else "Q?", "explanation": "e", "reference_answer": "A"}
    if options is not None:
        data["options"] = options
    attack = parse_attack(json.dumps(data), "choice", 2)
    assert (attack.question, attack.options) == (stem, texts)


def test_parse_defense_keeps_reasoning_and_normalizes_the_answer():
    defense = parse_defense('{"reasoning": "because", "answer": "c"}', "choice")
    assert (defense.reasoning, defense.answer) == ("because", "C")
    assert isinstance(parse_defense('{"reasoning": "because"}', "choice"), Rejected)
    assert isinstance(parse_defense('{"answer": "E"}', "choice", 4), Rejected), (
        "a letter past the options is no answer"
    )


def test_the_judges_blind_solution_needs_a_program_for_numbers():
    assert parse_solution('{"reasoning": "r", "program": "print(4)", "answer": "4"}', "number").program == "print(4)"
    assert "program" in parse_solution('{"reasoning": "r", "program": "", "answer": "4"}', "number").reason
    assert parse_solution('{"reasoning": "r", "answer": "b"}', "choice").answer == "B"


@pytest.mark.parametrize(
    "text, numeric",
    [
        ("1,250", True),
        ("-3.5", True),
        ("2e6", True),
        ("3/4", True),
        ("$12", True),
        ("about half", False),
        ("12 apples", False),
        ("", False),
    ],
)
def test_a_numeric_reference_is_a_number_and_nothing_else(text, numeric):
    assert roles.is_numeric_answer(text) is numeric


def _verdict(**changes):
    data = {
        "rationale": "ok",
        "question_valid": True,
        "defender_correct": False,
        "clinical_accuracy": 4,
        "multi_hop": 4,
        "annotation": 3,
        "complexity": 3,
    }
    data.update(changes)
    return json.dumps(data)


def test_parse_verdict_scores_quality_as_the_mean_of_rubric_criteria():
    verdict = parse_verdict(_verdict(), RUBRIC)
    assert verdict.question_valid and not verdict.defender_correct
    assert verdict.scores == {"clinical_accuracy": 4, "multi_hop": 4, "annotation": 3}
    assert verdict.reasoning_quality == pytest.approx(11 / 3)
    assert verdict.complexity == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"question_valid": "yes"},
        {"multi_hop": 7},
        {"annotation": None},
        {"complexity": 0},
        {"clinical_accuracy": True},
    ],
)
def test_parse_verdict_rejects_missing_or_out_of_range_fields_instead_of_guessing_a_score(changes):
    assert isinstance(parse_verdict(_verdict(**changes), RUBRIC), Rejected)


def test_an_out_of_range_score_says_which_and_why_so_the_judge_can_be_asked_again():
    rejected = parse_verdict(_verdict(multi_hop=10), RUBRIC)
    assert rejected.reason == '"multi_hop" is 10, outside the rubric\'s 1-5 range'
    again = roles.retry_messages([{"role": "user", "content": "grade"}], '{"multi_hop": 10}', rejected)
    assert [m["role"] for m in again] == ["user", "assistant", "user"] and rejected.reason in again[-1]["content"]


def test_the_verdict_records_the_judges_ruling_on_the_reference_and_its_own_error():
    verdict = parse_verdict(_verdict(reference_correct=True, own_error="I misread the dose"), RUBRIC)
    assert (verdict.reference_correct, verdict.own_error) == (True, "I misread the dose")
    assert parse_verdict(_verdict(question_valid=False), RUBRIC).reference_correct is False, (
        "absent: as question_valid"
    )


def test_refusal_is_recognised_only_when_there_is_no_json():
    assert roles.is_refusal("I'm sorry, but I can't help with that.")
    assert not roles.is_refusal('{"rationale": "I cannot see a flaw"}')
    assert not roles.is_refusal("garbled output")


@pytest.mark.parametrize(
    "score, level", [(1.0, 1), (1.49, 1), (1.5, 2), (3.49, 3), (3.5, 4), (4.49, 4), (4.5, 5), (5.0, 5)]
)
def test_quality_levels_are_the_papers_score_bands(score, level):
    assert quality_level(score) == level


def test_untrusted_text_is_substituted_literally_never_rendered_as_a_template():
    prompts = load_prompts("medical")
    hostile = "What is ${rubric} and $question? {{ config.__class__ }} {% for x in y %}"
    messages = roles.defense_messages(
        prompts, attack=roles.Attack(hostile, ["$x", "{{ y }}"], "e", "A"), answer_format="choice", n_options=2
    )
    assert hostile in messages[1]["content"]


@pytest.mark.parametrize("domain", ["math", "science", "medical"])
def test_packaged_prompts_render_for_every_domain(domain):
    prompts = load_prompts(domain)
    fmt = "number" if domain == "math" else "choice"
    attack = roles.Attack("Q", [] if fmt == "number" else ["a", "b", "c", "d"], "E", "1")
    kwargs = {"answer_format": fmt, "n_options": 4}
    for messages in (
        roles.attack_messages(prompts, capability="c", complexity=3, feedback="", **kwargs),
        roles.defense_messages(prompts, attack=attack, **kwargs),
        roles.solve_messages(prompts, attack=attack, **kwargs),
        roles.verdict_messages(
            prompts,
            attack=attack,
            defense=roles.Defense("r", "1"),
            solution=roles.Solution("s", "", "1"),
            tool_results="t",
        ),
    ):
        assert [m["role"] for m in messages] == ["system", "user"] and all(m["content"] for m in messages)
        # Every prompt names the reply's keys and shows an example, so an unconstrained reply still parses.
        assert "Reply with one JSON object with exactly these keys:" in messages[1]["content"]
    assert set(prompts.hashes()) == {"attacker", "defender", "solver", "judge", "rubric"}


def _result(question, correct, round_index, valid=True):
    return {
        "question": question,
        "defender_correct": correct,
        "question_valid": valid,
        "round": round_index,
        "attack_index": 0,
        "capability": "cap",
        "defender_answer": "B",
        "reference_answer": "C",
        "judge_rationale": f"why {question}",
    }


def test_feedback_shows_failures_first_with_the_answer_reference_and_rationale_within_a_budget():
    results = [
        _result("easy one", True, 2),
        _result("hard one", False, 0),
        _result("broken one", False, 1, valid=False),
    ]
    text = roles.feedback_text(results, limit=5, token_budget=500)
    lines = text.splitlines()[1:]
    assert lines[0].startswith("- [FAILED, cap] hard one | Defender answered: B; reference: C | Judge: why hard one")
    assert lines[1].startswith("- [solved, cap] easy one") and "broken one" not in text, (
        "invalid questions are not fed back"
    )
    assert roles.feedback_text(results, limit=0, token_budget=500) == ""
    assert len(roles.feedback_text(results, limit=5, token_budget=60).splitlines()) == 2, (
        "the budget cuts the older results"
    )


# --- the roles as tasks: each owns its messages, schema, parse, re-ask and row columns ------------------------------


def test_the_journal_names_of_the_role_steps_never_change():
    # A resumed build finds its finished calls under these names: renaming one would send every call again.
    steps = [task.step for task in (roles.Attacker, roles.Defender, roles.Solver, roles.Judge)]
    assert steps == ["attacker", "defender", "judge-solve", "judge"]


def test_each_task_owns_its_schema_and_messages_and_keeps_the_raw_text_of_a_rejected_reply():
    prompts = load_prompts("medical")
    attack = roles.Attack("Q?", ["w", "x", "y", "z"], "E", "B")
    tasks = [
        (roles.Attacker(prompts, "choice", 4), roles.attack_schema("choice", 4)),
        (roles.Defender(prompts, "choice", 4), roles.defense_schema("choice", 4)),
        (roles.Solver(prompts, "choice", 4), roles.solve_schema("choice", 4)),
        (roles.Judge(prompts, "choice"), roles.verdict_schema(prompts.rubric)),
    ]
    for task, schema in tasks:
        assert task.schema() == schema
        rejected = task.parse("I'm sorry, I cannot help.")
        assert isinstance(rejected, Rejected) and rejected.raw == "I'm sorry, I cannot help.", task.step
        again = task.retry([{"role": "user", "content": "q"}], rejected.raw, rejected)
        assert again[-1]["role"] == "user" and rejected.reason in again[-1]["content"]
    attacker = tasks[0][0]
    assert attacker.messages(capability="c", complexity=3, feedback="") == roles.attack_messages(
        prompts, capability="c", complexity=3, feedback="", answer_format="choice", n_options=4
    )
    assert tasks[1][0].messages(attack) == roles.defense_messages(
        prompts, attack=attack, answer_format="choice", n_options=4
    )
    assert tasks[1][0].parse('{"reasoning": "r", "answer": "b"}') == roles.Defense("r", "B")


def test_the_attacker_contributes_the_question_columns_and_the_sft_conversation():
    attack = roles.Attack("Q?", ["x", "y"], "Because.", "B")
    columns = roles.Attacker(load_prompts("medical"), "choice", 2).columns(
        roles.Outcome(attack, "{}", 10, 5, "2025-01-01T00:00:00+00:00")
    )
    assert (columns["question"], columns["options"], columns["reference_answer"]) == ("Q?", ["x", "y"], "B")
    assert (columns["attacker_prompt_tokens"], columns["attacker_completion_tokens"]) == (10, 5)
    assert columns["created_at"] == "2025-01-01T00:00:00+00:00"
    assert columns["messages"][-1]["content"].endswith("Final answer: B")


@pytest.mark.parametrize(
    "outcome, status, answer, reasoning",
    [
        (roles.Outcome(roles.Defense("r", "B"), "{...}", 3, 4), "ok", "B", "r"),
        (roles.Outcome(None, "I'm sorry", 3, 4, failure="refused"), "refused", None, "I'm sorry"),
        (roles.Outcome(None, "{oops", 3, 4, failure="unparseable"), "unparseable", None, "{oops"),
        (roles.Outcome(None, "", 0, 0, failure="endpoint"), "error", None, ""),
    ],
)
def test_the_defender_records_a_format_failure_apart_from_a_wrong_answer(outcome, status, answer, reasoning):
    columns = roles.Defender(load_prompts("medical"), "choice", 5).columns(outcome)
    assert (columns["defender_status"], columns["defender_answer"], columns["defender_reasoning"]) == (
        status,
        answer,
        reasoning,
    )


def test_the_judge_maps_its_verdict_and_a_tool_or_an_answer_check_overrides_its_word():
    judge = roles.Judge(load_prompts("medical"), "choice")
    attack = roles.Attack("Q?", ["x", "y", "z"], "E", "B")
    verdict = parse_verdict(_verdict(defender_correct=True), RUBRIC)
    solved = roles.Outcome(roles.Solution("s", "", "B"), "{}", 7, 1)
    outcome = roles.Outcome(verdict, "{}", 20, 3, "2025-01-01T00:00:00+00:00")
    columns = judge.columns(
        outcome, solved=solved, attack=attack, defense=roles.Defense("r", "C"), verified=None, tool_calls=[]
    )
    assert (columns["judge_prompt_tokens"], columns["judge_completion_tokens"]) == (27, 4), "blind solve + verdict"
    assert columns["judge_status"] == "ok" and columns["judge_defender_correct"] is True
    assert (columns["defender_correct"], columns["correctness_decided_by"]) == (False, "answer_check")
    assert (columns["question_valid"], columns["validity_decided_by"]) == (True, "blind_solve")
    assert columns["quality_level"] == quality_level(verdict.reasoning_quality)
    failed = judge.columns(
        roles.Outcome(None, "garbage", 5, 5, failure="unparseable", error="unparseable answer: no JSON"),
        solved=solved,
        attack=attack,
        defense=None,
        verified=None,
        tool_calls=[],
    )
    assert (failed["judge_status"], failed["error"], failed["judge_rationale"]) == (
        "parse_error",
        "judge unparseable answer: no JSON",
        "garbage",
    )
    ruled = judge.verdict_columns(verdict, attack, None, roles.Solution("s", "print(2)", "B"), False)
    assert (ruled["question_valid"], ruled["validity_decided_by"], ruled["defender_correct"]) == (
        False,
        "python",
        None,
    )
