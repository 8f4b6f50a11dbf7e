import json

import pytest

from builder import roles
from builder.roles import extract_json, load_prompts, normalize_choice, parse_attack, parse_defense, parse_verdict, quality_level

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
    [("B", "B"), ("(c)", "C"), ("D) Aspirin", "D"), ("Option e", "E"), ("a.", "A"), ("Because", None), ("F", None), (None, None)],
)
def test_normalize_choice_reads_option_letters(value, letter):
    assert normalize_choice(value) == letter


def test_parse_attack_requires_question_explanation_and_answer():
    good = {"question": "Q? (A) x (B) y", "explanation": "1. fact", "reference_answer": "(b)", "verification_code": ""}
    attack = parse_attack(json.dumps(good), "choice")
    assert attack and attack.reference_answer == "B" and attack.verification_code == ""
    assert parse_attack(json.dumps({**good, "question": "  "}), "choice") is None
    assert parse_attack(json.dumps({**good, "reference_answer": "maybe"}), "choice") is None
    numeric = parse_attack(json.dumps({**good, "reference_answer": 42}), "number")
    assert numeric and numeric.reference_answer == "42"


def test_parse_defense_keeps_reasoning_and_normalizes_the_answer():
    defense = parse_defense('{"reasoning": "because", "answer": "c"}', "choice")
    assert (defense.reasoning, defense.answer) == ("because", "C")
    assert parse_defense('{"reasoning": "because"}', "choice") is None


def _verdict(**changes):
    data = {"rationale": "ok", "question_valid": True, "defender_correct": False, "clinical_accuracy": 4, "multi_hop": 4, "annotation": 3, "complexity": 3}
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
    [{"question_valid": "yes"}, {"multi_hop": 7}, {"annotation": None}, {"complexity": 0}, {"clinical_accuracy": True}],
)
def test_parse_verdict_rejects_missing_or_out_of_range_fields_instead_of_guessing_a_score(changes):
    assert parse_verdict(_verdict(**changes), RUBRIC) is None


def test_refusal_is_recognised_only_when_there_is_no_json():
    assert roles.is_refusal("I'm sorry, but I can't help with that.")
    assert not roles.is_refusal('{"rationale": "I cannot see a flaw"}')
    assert not roles.is_refusal("garbled output")


@pytest.mark.parametrize("score, level", [(1.0, 1), (1.49, 1), (1.5, 2), (3.49, 3), (3.5, 4), (4.49, 4), (4.5, 5), (5.0, 5)])
def test_quality_levels_are_the_papers_score_bands(score, level):
    assert quality_level(score) == level


def test_untrusted_text_is_substituted_literally_never_rendered_as_a_template():
    prompts = load_prompts("medical")
    hostile = "What is ${rubric} and $question? {{ config.__class__ }} {% for x in y %}"
    messages = roles.defense_messages(prompts, question=hostile)
    assert hostile in messages[1]["content"]


@pytest.mark.parametrize("domain", ["math", "science", "medical"])
def test_packaged_prompts_render_for_every_domain(domain):
    prompts = load_prompts(domain)
    attack = roles.Attack("Q", "E", "1", "")
    for messages in (
        roles.attack_messages(prompts, capability="c", complexity=3, feedback=""),
        roles.defense_messages(prompts, question="Q"),
        roles.verdict_messages(prompts, attack=attack, defense=roles.Defense("r", "1"), tool_results="t"),
    ):
        assert [m["role"] for m in messages] == ["system", "user"] and all(m["content"] for m in messages)
    assert set(prompts.hashes()) == {"attacker", "defender", "judge", "rubric"}


def test_feedback_lists_recent_failed_and_solved_questions():
    history = [
        {"question": "easy one", "defender_correct": True, "judge_rationale": "trivial"},
        {"question": "hard one", "defender_correct": False, "judge_rationale": "missed step 2"},
    ]
    text = roles.feedback_text(history, limit=2)
    assert "[Defender FAILED] hard one | Judge: missed step 2" in text and "[Defender solved] easy one" in text
    assert roles.feedback_text(history, limit=0) == ""
