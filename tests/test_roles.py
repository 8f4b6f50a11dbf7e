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
