"""What real servers' constrained replies look like, parsed (fast; the real server runs in test_real_builds.py)."""

from __future__ import annotations

from builder import roles


def test_a_raw_newline_inside_a_string_parses_as_llama_cpp_grammar_allows_it():
    # Measured from llama.cpp serving SmolLM2-135M: its JSON grammar's `char` is `[^"\\]`, so a raw newline can sit
    # in a string.
    reply = (
        '{"question": "How?", "options": ["a", "b", "c", "d"], "explanation": "[...]\n{\n  ", "reference_answer": "A"}'
    )
    attack = roles.parse_attack(reply, "choice", 4)
    assert isinstance(attack, roles.Attack) and attack.explanation == "[...]\n{"


def test_the_schema_requires_every_text_the_parser_requires():
    # An empty question, option, explanation or numeric answer is rejected by the parser; the schema says so as well,
    # so a server that constrains decoding cannot produce it. Optional texts stay optional.
    attack = roles.attack_schema("choice", 4)["properties"]
    assert (
        attack["question"]["minLength"]
        == attack["explanation"]["minLength"]
        == attack["options"]["items"]["minLength"]
        == 1
    )
    assert roles.parse_attack(
        '{"question": "", "options": ["a","b","c","d"], "explanation": "x", "reference_answer": "A"}', "choice", 4
    ) == roles.Rejected('"question" is missing or empty')
    assert roles.attack_schema("number")["properties"]["reference_answer"]["minLength"] == 1
    assert roles.solve_schema("number")["properties"]["program"]["minLength"] == 1
    assert "minLength" not in roles.solve_schema("choice", 4)["properties"]["program"]  # a program is optional there
    assert "minLength" not in roles.defense_schema("number")["properties"]["reasoning"]
    rubric = roles.load_prompts("medical").rubric
    assert "minLength" not in roles.verdict_schema(rubric)["properties"]["own_error"]  # "" means: no error of its own
