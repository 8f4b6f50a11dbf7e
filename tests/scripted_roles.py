"""A deterministic three-role script for the loopback TGI server: what each role answers, keyed by its prompt.

Attack g of a build with capabilities CAPABILITIES and complexity levels [2, 3] gets question
QUESTIONS[capability_index * 2 + level_index], so attacks 6 and 7 of a 2x4 build repeat attacks 0 and 1
(near-duplicates the novelty filter must drop). The six distinct questions exercise every judge outcome:

| q | reference | defender | verification code   | judge answer        | expected                  |
|---|-----------|----------|---------------------|---------------------|---------------------------|
| 0 | B         | B        | prints 4            | valid, scores 4 4 4 | ok, defender correct, L4  |
| 1 | C         | B        | infinite loop       | (never asked)       | tool_error                |
| 2 | D         | B        | (none)              | valid, scores 4 4 5 | ok, defender failed, L4   |
| 3 | A         | B        | (none)              | garbage             | parse_error               |
| 4 | E         | B        | (none)              | valid, scores 3 3 3 | ok, L3 (not curated)      |
| 5 | B         | B        | (none)              | a refusal           | refused                   |
"""

from __future__ import annotations

import json
import re
from typing import Any

CAPABILITIES = ["cardiology", "pharmacology", "biostatistics"]

QUESTIONS = [
    "A 62-year-old man has crushing chest pain radiating to the left arm and ST elevation in leads II, III and aVF. Which artery is most likely occluded? (A) LAD (B) RCA (C) LCx (D) left main (E) diagonal",
    "A patient weighing 70 kg needs gentamicin at 5 mg/kg once daily with a creatinine clearance of 30 mL/min. What is the adjusted dosing interval? (A) 12 h (B) 24 h (C) 48 h (D) 72 h (E) 6 h",
    "A screening test has sensitivity 90% and specificity 80% in a population with 10% prevalence. What is the positive predictive value? (A) 90% (B) 80% (C) 50% (D) 33% (E) 10%",
    "Which drug interaction explains bleeding in a patient on warfarin who starts fluconazole for thrush? (A) CYP2C9 inhibition (B) CYP3A4 induction (C) reduced vitamin K intake (D) protein binding (E) renal clearance",
    "A cohort study follows smokers and non-smokers for lung cancer over 20 years; the relative risk is 15. What is the attributable risk percent among smokers? (A) 50% (B) 75% (C) 85% (D) 90% (E) 93%",
    "A child with a barking cough, inspiratory stridor and a steeple sign on neck X-ray most likely has which infection? (A) epiglottitis (B) croup (C) bacterial tracheitis (D) retropharyngeal abscess (E) foreign body",
]
REFERENCES = ["B", "C", "D", "A", "E", "B"]
CODE = ["print(2 + 2)", "while True:\n    pass", "", "", "", ""]
JUDGE_SCORES = {0: (4, 4, 4), 2: (4, 4, 5), 4: (3, 3, 3)}


def _question_index(user: str) -> int:
    skill = re.search(r"Target reasoning skill: (.*)", user).group(1).strip()
    level = int(re.search(r"Complexity: (\d)", user).group(1))
    return CAPABILITIES.index(skill) * 2 + (level - 2)


def respond(body: dict[str, Any]) -> str:
    """The answer of whichever role `body` is addressed to."""
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if "You are the Attacker" in system:
        q = _question_index(user)
        return json.dumps(
            {
                "question": QUESTIONS[q],
                "explanation": f"1. Step one for question {q}. 2. Step two links the facts.",
                "reference_answer": REFERENCES[q],
                "verification_code": CODE[q],
            }
        )
    if "You are the Defender" in system:
        return json.dumps({"reasoning": "Thinking it through step by step.", "answer": "B"})
    if "You are the Judge" in system:
        q = next(i for i, text in enumerate(QUESTIONS) if text in user)
        if q == 3:
            return "The question is {fine but I will not give JSON"
        if q == 5:
            return "I'm sorry, but I can't help with grading this."
        a, b, c = JUDGE_SCORES[q]
        return json.dumps(
            {
                "rationale": f"Checked question {q} against the tool results.",
                "question_valid": True,
                "defender_correct": q == 0,
                "clinical_accuracy": a,
                "multi_hop": b,
                "annotation": c,
                "complexity": 3,
            }
        )
    raise AssertionError(f"unexpected request: {system[:80]}")


def recipe(url: str, output_dir: str, **changes: Any) -> dict[str, Any]:
    """A 2-round x 4-attack recipe with every role on the scripted endpoint."""
    role = {"base_url": url, "model": "scripted/tgi", "max_tokens": 256, "timeout": 1.0, "max_attempts": 6}
    data = {
        "domain": "medical",
        "answer_format": "choice",
        "capabilities": CAPABILITIES,
        "complexity_levels": [2, 3],
        "rounds": 2,
        "attacks_per_round": 4,
        "player_a": dict(role),
        "player_b": dict(role),
        "judge": {**role, "temperature": 0.0},
        "sandbox": {"wall_seconds": 10.0, "cpu_seconds": 1},  # the CPU limit, not the wall clock, stops the loop
        "output_dir": output_dir,
    }
    data.update(changes)
    return data
