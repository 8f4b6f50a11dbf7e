"""A deterministic three-role script for the loopback TGI server: what each role answers, keyed by its prompt.

Attack g of a build with capabilities CAPABILITIES and complexity levels [2, 3] (round-robin targeting) gets
question QUESTIONS[capability_index * 2 + level_index], so attacks 6 and 7 of a 2x4 build repeat attacks 0 and 1
(near-duplicates the novelty filter must drop). The Attacker sends each question's stem and its five options apart.
The six distinct questions exercise every judge outcome:

| q | ref | defender | Judge blind (program) | judge verdict                        | expected                        |
|---|-----|----------|-----------------------|--------------------------------------|---------------------------------|
| 0 | B   | B        | B (prints 4)          | valid, scores 4 4 4                  | ok, valid, defender correct, L4 |
| 1 | C   | B        | B (infinite loop)     | valid, reference right, no own error | ok, invalid (judge_ruling), L4  |
| 2 | D   | B        | D                     | valid, scores 4 4 5                  | ok, valid, defender failed, L4  |
| 3 | A   | B        | A                     | garbage                              | parse_error                     |
| 4 | E   | B        | E                     | valid, scores 3 3 3, says B is right | ok, L3; the answer check wins   |
| 5 | B   | B        | B                     | a refusal                            | refused                         |
"""

from __future__ import annotations

import json
import re
from typing import Any

CAPABILITIES = ["cardiology", "pharmacology", "biostatistics"]

QUESTIONS = [
    (
        "A 62-year-old man has crushing chest pain radiating to the left arm and ST elevation in leads II, III and"
        " aVF. Which artery is most likely occluded? (A) LAD (B) RCA (C) LCx (D) left main (E) diagonal"
    ),
    (
        "A patient weighing 70 kg needs gentamicin at 5 mg/kg once daily with a creatinine clearance of 30 mL/min."
        " What is the adjusted dosing interval? (A) 12 h (B) 24 h (C) 48 h (D) 72 h (E) 6 h"
    ),
    (
        "A screening test has sensitivity 90% and specificity 80% in a population with 10% prevalence. What is the"
        " positive predictive value? (A) 90% (B) 80% (C) 50% (D) 33% (E) 10%"
    ),
    (
        "Which drug interaction explains bleeding in a patient on warfarin who starts fluconazole for thrush? (A)"
        " CYP2C9 inhibition (B) CYP3A4 induction (C) reduced vitamin K intake (D) protein binding (E) renal clearance"
    ),
    (
        "A cohort study follows smokers and non-smokers for lung cancer over 20 years; the relative risk is 15. What"
        " is the attributable risk percent among smokers? (A) 50% (B) 75% (C) 85% (D) 90% (E) 93%"
    ),
    (
        "A child with a barking cough, inspiratory stridor and a steeple sign on neck X-ray most likely has which"
        " infection? (A) epiglottitis (B) croup (C) bacterial tracheitis (D) retropharyngeal abscess (E) foreign body"
    ),
]
REFERENCES = ["B", "C", "D", "A", "E", "B"]
BLIND = ["B", "B", "D", "A", "E", "B"]
CODE = ["print(2 + 2)", "while True:\n    pass", "", "", "", ""]
JUDGE_SCORES = {0: (4, 4, 4), 1: (4, 4, 4), 2: (4, 4, 5), 4: (3, 3, 3)}

# A second build's material (a later dataset version): every question valid, L4, and the Defender fails them.
LATER_CAPABILITIES = ["nephrology", "endocrinology"]
LATER_QUESTIONS = {
    ("nephrology", 2): (
        "A 58-year-old with nephrotic-range proteinuria, low serum albumin and a renal biopsy showing spike-and-dome"
        " basement membrane deposits most likely has which disease? (A) minimal change (B) FSGS (C) membranous"
        " nephropathy (D) IgA nephropathy (E) Alport syndrome"
    ),
    ("nephrology", 3): (
        "A marathon runner collapses with dark urine, a creatine kinase of 40,000 U/L and rising potassium. Which"
        " intervention comes first? (A) dialysis (B) aggressive IV isotonic fluids (C) furosemide (D) bicarbonate only"
        " (E) mannitol only"
    ),
    ("endocrinology", 2): (
        "A woman has weight gain, purple striae and a high late-night salivary cortisol that suppresses with high-dose"
        " but not low-dose dexamethasone. Where is the lesion? (A) adrenal adenoma (B) pituitary adenoma (C) ectopic"
        " ACTH (D) exogenous steroids (E) adrenal carcinoma"
    ),
    ("endocrinology", 3): (
        "A patient with type 1 diabetes has glucose 520 mg/dL, pH 7.1 and potassium 3.1 mEq/L. What must precede the"
        " insulin infusion? (A) bicarbonate (B) potassium replacement (C) phosphate (D) glucagon (E) nothing"
    ),
}


def split_options(text: str) -> tuple[str, list[str]]:
    """`"stem (A) x (B) y"` -> ("stem", ["x", "y"])."""
    stem, *rest = re.split(r"\s*\([A-E]\)\s*", text)
    return stem, rest


OPTIONS = [split_options(q)[1] for q in QUESTIONS]
QUESTIONS = [split_options(q)[0] for q in QUESTIONS]
LATER_OPTIONS = {key: split_options(q)[1] for key, q in LATER_QUESTIONS.items()}
LATER_QUESTIONS = {key: split_options(q)[0] for key, q in LATER_QUESTIONS.items()}


def _skill_level(user: str) -> tuple[str, int]:
    return re.search(r"Target reasoning skill: (.*)", user).group(1).strip(), int(
        re.search(r"Complexity: (\d)", user).group(1)
    )


def respond(body: dict[str, Any]) -> str:
    """The answer of whichever role `body` is addressed to."""
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if "You are the Attacker" in system:
        skill, level = _skill_level(user)
        if skill in LATER_CAPABILITIES:
            later = {"question": LATER_QUESTIONS[skill, level], "options": LATER_OPTIONS[skill, level]}
            return json.dumps(
                {**later, "explanation": "1. Link the findings. 2. Apply the rule.", "reference_answer": "C"}
            )
        q = CAPABILITIES.index(skill) * 2 + (level - 2)
        return json.dumps(
            {
                "question": QUESTIONS[q],
                "options": OPTIONS[q],
                "explanation": f"1. Step one for question {q}. 2. Step two links the facts.",
                "reference_answer": REFERENCES[q],
            }
        )
    if "You are the Defender" in system:
        return json.dumps({"reasoning": "Thinking it through step by step.", "answer": "B"})
    if "You are the Judge" in system and "REFERENCE ANSWER" not in user:  # the blind solve
        if any(text in user for text in LATER_QUESTIONS.values()):
            return json.dumps({"reasoning": "Solved blind.", "program": "", "answer": "C"})
        q = next(i for i, text in enumerate(QUESTIONS) if text in user)
        return json.dumps({"reasoning": f"Solved question {q} blind.", "program": CODE[q], "answer": BLIND[q]})
    if "You are the Judge" in system:
        if any(text in user for text in LATER_QUESTIONS.values()):
            scores = {"clinical_accuracy": 4, "multi_hop": 4, "annotation": 4}
            return json.dumps(
                {
                    "rationale": "Sound question.",
                    "question_valid": True,
                    "defender_correct": False,
                    **scores,
                    "complexity": 3,
                }
            )
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
                "reference_correct": True,
                "own_error": "",
                "defender_correct": q in (0, 4),
                "clinical_accuracy": a,
                "multi_hop": b,
                "annotation": c,
                "complexity": 3,
            }
        )
    raise AssertionError(f"unexpected request: {system[:80]}")


def recipe(url: str, output_dir: str, **changes: Any) -> dict[str, Any]:
    """A 2-round x 4-attack recipe with every role on the scripted endpoint, each under its own model name."""
    role = {"base_url": url, "max_tokens": 256, "timeout": 1.0, "max_attempts": 6}
    data = {
        "domain": "medical",
        "answer_format": "choice",
        "capabilities": CAPABILITIES,
        "complexity_levels": [2, 3],
        "rounds": 2,
        "attacks_per_round": 4,
        "targeting": "round_robin",
        "player_a": {**role, "model": "scripted/player-a"},
        "player_b": {**role, "model": "scripted/player-b"},
        "judge": {**role, "model": "scripted/judge", "temperature": 0.0},
        "sandbox": {"wall_seconds": 10.0, "cpu_seconds": 1},  # the CPU limit, not the wall clock, stops the loop
        # Against the offline benchmark fixtures; 13-grams, as their 8 questions a benchmark cannot tell stock
        # phrasing.
        "decontamination": {"eval_recipe": "configs/eval/local.yaml", "ngram": 13},
        "output_dir": output_dir,
    }
    data.update(changes)
    return data
