"""How a question is put to a model: one format for training and evaluation.

The SFT user turn of a NanoFlux dataset and the prompt an evaluation sends are both rendered here, so a model is
trained on exactly the layout it is evaluated on: (context), the question, the lettered options one per line
(`A. ...`), and the answer instruction of the benchmark's kind.
"""

from __future__ import annotations

from collections.abc import Sequence

LETTERS = "ABCDEFGHIJ"

INSTRUCTIONS = {
    ("number", True): (
        "Solve the problem step by step. End with the final numeric answer on its own line, written as `Final answer:"
        " <number>`."
    ),
    ("number", False): "Give only the final numeric answer, written as `Final answer: <number>`.",
    ("choice", True): (
        "Think step by step, then end with the letter of the correct option on its own line, written as `Final answer:"
        " <letter>`."
    ),
    ("choice", False): "Answer with the letter of the correct option only, written as `Final answer: <letter>`.",
    ("yes_no_maybe", True): (
        "Think step by step, then end with yes, no or maybe on its own line, written as `Final answer: <yes, no or"
        " maybe>`."
    ),
    ("yes_no_maybe", False): "Answer with yes, no or maybe only, written as `Final answer: <yes, no or maybe>`.",
}


def question_text(question: str, options: Sequence[str]) -> str:
    """The question, then its lettered options one per line (`A. ...`)."""
    if not options:
        return question
    return question + "\n\n" + "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def build_prompt(
    question: str, options: Sequence[str], kind: str, *, reasoning: bool = True, context: str | None = None
) -> str:
    """The user message: (context), the question, (the lettered options), and how to answer."""
    body = question_text(f"Question: {question}" if context else question, options)
    parts = [f"Context:\n{context}", body] if context else [body]
    parts.append(INSTRUCTIONS[kind, reasoning])
    return "\n\n".join(parts)
