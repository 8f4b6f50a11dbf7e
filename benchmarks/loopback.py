"""The endpoint of the build benchmarks: a simulated continuous-batching server (`benchmarks/batching_server.py`) in a
child process, answering a three-role workload (Attacker, Defender, Judge) with valid answers of set lengths.

Why a child process: in the builder's process the server's scheduler would compete with the builder for the
interpreter and its event loop, and its CPU time would count as the builder's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from benchmarks.batching_server import BatchingHTTPServer, ServerModel, stats_record
from localhub.serving import stop_process

ROLE_MARKERS = {"attacker": "You are the Attacker", "defender": "You are the Defender", "judge": "You are the Judge"}
# Completion tokens per answer, cycled per role in arrival order (means 240 / 125 / 125 / 95); `solver` is the Judge's
# blind solve (a Judge request whose prompt holds no reference answer yet).
DEFAULT_LENGTHS = {
    "attacker": (180, 260, 220, 300, 240),
    "defender": (90, 140, 110, 160),
    "solver": (90, 140, 110, 160),
    "judge": (70, 100, 85, 125),
}
LETTERS = "ABCDEFGHIJ"
_WORD = re.compile(r"[a-z]{4,}")
_PRODUCT = re.compile(r"multiply (\d+) by (\d+)")


@dataclass
class EndpointStats:
    """What the server did since it started (or since `reset`); `bound_s` is its bound for that work."""

    requests: int
    rejected: int
    prompt_tokens: int
    completion_tokens: int
    steps: int
    busy_s: float
    bound_s: float
    max_running: int
    max_waiting: int
    max_in_system: int
    late_s: float
    requests_by_role: dict[str, int] = field(default_factory=dict)


class RoleWorkload:
    """Answers each chat request as the role its system prompt names, with the JSON that role's parser accepts.

    Lengths (completion tokens) cycle per role in arrival order, so two clients that make the same number of calls
    per role get exactly the same generation work, in whatever order they send them. Questions are word salads
    from the domain's reference corpus, drawn by a generator seeded with the request: distinct from each other (the
    novelty filter keeps them all) and the same for the same request. `math` (answer_format number): the question
    asks to multiply two numbers, the reference is their product, and the Judge's blind solve carries a Python
    program that computes it, so the sandbox runs on every example and verifies the reference.
    """

    def __init__(self, domain: str = "medical", lengths: dict[str, Sequence[int]] | None = None):
        from builder.roles import load_prompts

        self.domain = domain
        self.lengths = {role: tuple(values) for role, values in (lengths or DEFAULT_LENGTHS).items()}
        self.criteria = [c.name for c in load_prompts(domain).rubric.quality]
        corpus = resources.files("builder") / "domains" / domain / "corpus.jsonl"
        text = " ".join(json.loads(line)["text"] for line in corpus.read_text().splitlines() if line.strip())
        self.vocabulary = sorted(set(_WORD.findall(text.lower())))
        self._served: Counter[str] = Counter()

    def reset(self) -> None:
        self._served.clear()

    def _next_length(self, role: str) -> int:
        n = self._served[role]
        self._served[role] += 1
        return self.lengths[role][n % len(self.lengths[role])]

    def _words(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choices(self.vocabulary, k=max(n, 1)))

    def __call__(self, body: dict[str, Any]) -> tuple[str, int, str]:
        """(answer, completion tokens, role)."""
        messages = body.get("messages") or []
        system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
        role = next((name for name, marker in ROLE_MARKERS.items() if marker in system), None)
        if role is None:
            return json.dumps({"error": "no role marker in the system prompt"}), 8, "unknown"
        user = messages[-1].get("content", "") if messages else ""
        if role == "judge" and "REFERENCE ANSWER" not in user:
            role = "solver"
        length = self._next_length(role)
        key = json.dumps([messages, body.get("seed")], sort_keys=True).encode()
        rng = random.Random(hashlib.sha256(key).digest())
        answer = (
            self._math(role, rng, user, length) if self.domain == "math" else self._choice(role, rng, user, length)
        )
        return json.dumps(answer), length, role

    def _choice(self, role: str, rng: random.Random, user: str, length: int) -> dict[str, Any]:
        # As many options as the recipe asks for: the Attacker's prompt names the last letter, the others' prompts
        # list them.
        last = re.search(r"one of A, (?:[B-J], )*[B-J] or ([B-J])", user)
        letters = (
            LETTERS[: LETTERS.index(last.group(1)) + 1]
            if last
            else LETTERS[: len(re.findall(r"(?m)^[A-J]\. ", user))] or "ABCDE"
        )
        if role == "attacker":
            options = [self._words(rng, 2) for _ in letters]
            answer = {
                "question": f"{self._words(rng, 40)}?",
                "options": options,
                "explanation": "",
                "reference_answer": rng.choice(letters),
            }
            answer["explanation"] = self._words(rng, length - len(json.dumps(answer).split()))
            return answer
        if role in ("defender", "solver"):
            return {"reasoning": self._words(rng, length - 3), "program": "", "answer": rng.choice(letters)}
        return self._verdict(rng, length)

    def _math(self, role: str, rng: random.Random, user: str, length: int) -> dict[str, Any]:
        if role == "attacker":
            a, b = rng.randint(1000, 99_999), rng.randint(12, 999)
            question = f"{self._words(rng, 20)}: multiply {a} by {b}, then {self._words(rng, 20)}?"
            answer = {"question": question, "explanation": "", "reference_answer": str(a * b)}
            answer["explanation"] = self._words(rng, length - len(json.dumps(answer).split()))
            return answer
        found = _PRODUCT.search(user)
        a, b = (int(found.group(1)), int(found.group(2))) if found else (1, 1)
        if role == "defender":
            return {
                "reasoning": self._words(rng, length - 3),
                "answer": str(a * b if rng.random() < 0.5 else a * b + rng.randint(1, 99)),
            }
        if role == "solver":
            program = f"a, b = {a}, {b}\ntotal = 0\nfor _ in range(b):\n    total += a\nprint(total)"
            return {"reasoning": self._words(rng, length - 20), "program": program, "answer": str(a * b)}
        return self._verdict(rng, length)

    def _verdict(self, rng: random.Random, length: int) -> dict[str, Any]:
        answer: dict[str, Any] = {"rationale": "", "question_valid": True, "defender_correct": rng.random() < 0.5}
        answer.update({name: 4 for name in self.criteria})
        answer["complexity"] = rng.randint(2, 4)
        answer["rationale"] = self._words(rng, length - len(json.dumps(answer).split()))
        return answer


async def _serve(settings: dict[str, Any]) -> None:
    workload = RoleWorkload(settings["domain"], settings["lengths"])
    server = BatchingHTTPServer(ServerModel(**settings["server"]), workload)
    await server.start()
    print(json.dumps({"url": server.url}), flush=True)
    try:
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if command == "stats":
                print(json.dumps(stats_record(server)), flush=True)
            elif command == "reset":
                server.engine.reset()
                workload.reset()
                print(json.dumps({"reset": True}), flush=True)
            else:
                break
    finally:
        await server.stop()


def serve(settings: dict[str, Any]) -> None:
    """The server process: start the server, print its URL, then answer `stats` / `reset` / `close` lines on stdin."""
    asyncio.run(_serve(settings))


class LoopbackEndpoint:
    """A `RoleWorkload` served by a simulated batching server in a child process. Use with `with`; `url` is its base
    URL."""

    def __init__(
        self, domain: str = "medical", *, server: ServerModel, lengths: dict[str, Sequence[int]] | None = None
    ):
        self.model = server
        self.settings = {
            "domain": domain,
            "lengths": {role: list(values) for role, values in (lengths or DEFAULT_LENGTHS).items()},
            "server": dataclasses.asdict(server),
        }
        self.url = ""
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> LoopbackEndpoint:
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loopback", json.dumps(self.settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env=env,
        )
        self.url = self._ask(None)["url"]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ask(self, command: str | None) -> dict[str, Any]:
        assert self._process is not None and self._process.stdin and self._process.stdout
        if command is not None:
            self._process.stdin.write(command + "\n")
            self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the loopback server exited (code {self._process.wait()}); its error is above")
        return json.loads(line)

    def stats(self) -> EndpointStats:
        return EndpointStats(**self._ask("stats"))

    def reset(self) -> None:
        """Forget requests, busy time and where each role's length cycle is (so the next client gets the same)."""
        self._ask("reset")

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._process.stdin.write("close\n")
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        stop_process(self._process, timeout=10, terminate=False)  # closing its stdin asked it to stop
        self._process = None


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
