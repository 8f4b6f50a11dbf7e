"""The Judge's tools: sandboxed Python, reference-corpus lookup and deterministic answer checks.

Tools run *before* the Judge's verdict call and their results go into its prompt; where a tool gives a verdict
(the Judge's own verification program's output against a numeric reference, an option letter against the key)
the tool wins over the LLM, as in verifiable-reward pipelines.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from builder.corpus import Corpus
from builder.sandbox import SandboxLimits, run_python

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?![\d.]))?|-?\.\d+")
# GSM-Hard's own scorer (PAL's gsm_eval.py) compares with an absolute tolerance of 1e-3: a relative one would accept
# target +- 1 for most of its large targets.
ABS_TOL = 1e-3


@dataclass
class ToolCall:
    """One tool use, stored with the example (`tool_calls` column)."""

    tool: str
    input: str
    output: str
    ok: bool
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def python_tool(code: str, limits: SandboxLimits) -> ToolCall:
    """Run untrusted verification code in the sandbox (separate process, limits, no network)."""
    result = run_python(code, limits=limits)
    output = result.stdout.strip() if result.ok else (result.stderr.strip()[-500:] or result.stdout.strip())
    return ToolCall("python", code, output, result.ok, result.error)


def lookup_tool(corpus: Corpus, query: str, k: int = 3) -> ToolCall:
    hits = corpus.search(query, k=k)
    output = "\n".join(f"[{p.id}] {p.title}: {p.text}" for p, _ in hits) or "(no matching passage)"
    return ToolCall("lookup", query, output, True)


def parse_number(text: str) -> float | None:
    """The last number in `text` ('$1,234.50' -> 1234.5, '3/4' -> 0.75), else None."""
    matches = _NUMBER.findall(text or "")
    if not matches:
        return None
    token = matches[-1].replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            numerator, denominator = token.split("/")
            return float(numerator) / float(denominator) if float(denominator) else None
        return float(token)
    except ValueError:
        return None


def _tolerance(reference: str) -> float:
    """PAL's absolute 1e-3, or half a unit of the last decimal the reference states ('33.33' matches 33.3333)."""
    decimals = re.search(r"\.(\d+)\s*%?\s*$", reference.strip())
    return max(ABS_TOL, 0.5 * 10 ** -len(decimals.group(1))) if decimals else ABS_TOL


def answers_match(answer: str, reference: str, answer_format: str) -> bool | None:
    """Deterministic check of an answer against the reference; None when the format has none (free text)."""
    if answer_format == "number":
        a, b = parse_number(answer), parse_number(reference)
        if a is None or b is None:
            return False
        return math.isfinite(a) and abs(a - b) < _tolerance(reference)
    if answer_format == "choice":
        return answer.strip().upper() == reference.strip().upper()
    return None


def format_tool_results(calls: list[ToolCall]) -> str:
    """Tool results as the Judge reads them."""
    if not calls:
        return "(no tools were used)"
    parts = []
    for call in calls:
        status = "ok" if call.ok else f"failed: {call.error}"
        parts.append(f"[{call.tool} | {status}]\n{call.output[:1500]}")
    return "\n\n".join(parts)
