"""The endpoint of the build benchmarks: the tests' scripted TGI server (`tests/tgi_server.py`), in a child process,
answering a three-role workload (Attacker, Defender, Judge) with valid answers of set lengths.

The server takes `latency` seconds per request plus `token_latency` seconds per generated token, and processes at
most `capacity` requests at once; the rest queue, as on a real TGI. It adds up the service time it scripted, so
`service_seconds / capacity` is the shortest wall time in which any client could have had its answers: the bound.

Why a child process: in the builder's process the server's threads would compete with the builder for the
interpreter lock, and their CPU time would count as the builder's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

ROLE_MARKERS = {"attacker": "You are the Attacker", "defender": "You are the Defender", "judge": "You are the Judge"}
# Completion tokens per answer, cycled per role in arrival order (means 240 / 125 / 125 / 95); `solver` is the Judge's
# blind solve (a Judge request whose prompt holds no reference answer yet).
DEFAULT_LENGTHS = {
    "attacker": (180, 260, 220, 300, 240), "defender": (90, 140, 110, 160), "solver": (90, 140, 110, 160), "judge": (70, 100, 85, 125),
}  # fmt: skip
LETTERS = "ABCDEFGHIJ"
_WORD = re.compile(r"[a-z]{4,}")


@dataclass
class EndpointStats:
    """What the server did since it started (or since `reset`)."""

    requests: int
    service_seconds: float
    completion_tokens: int
    max_concurrent: int
    requests_by_role: dict[str, int] = field(default_factory=dict)


class RoleWorkload:
    """Answers each chat request as the role its system prompt names, with the JSON that role's parser accepts.

    Lengths (completion tokens) cycle per role in arrival order, so two clients that make the same number of calls
    per role get exactly the same generation work, in whatever order they send them. Questions are word salads
    from the domain's reference corpus, drawn by a generator seeded with the request: distinct from each other (the
    novelty filter keeps them all) and the same for the same request.
    """

    def __init__(self, domain: str = "medical", lengths: dict[str, Sequence[int]] | None = None):
        from builder.roles import load_prompts

        self.domain = domain
        self.lengths = {role: tuple(values) for role, values in (lengths or DEFAULT_LENGTHS).items()}
        self.criteria = [c.name for c in load_prompts(domain).rubric.quality]
        corpus = resources.files("builder") / "corpora" / f"{domain}.jsonl"
        text = " ".join(json.loads(line)["text"] for line in corpus.read_text().splitlines() if line.strip())
        self.vocabulary = sorted(set(_WORD.findall(text.lower())))
        self._lock = threading.Lock()
        self._served: Counter[str] = Counter()

    def reset(self) -> None:
        with self._lock:
            self._served.clear()

    @property
    def served(self) -> dict[str, int]:
        with self._lock:
            return dict(self._served)

    def _next_length(self, role: str) -> int:
        with self._lock:
            n = self._served[role]
            self._served[role] += 1
        return self.lengths[role][n % len(self.lengths[role])]

    def _words(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choices(self.vocabulary, k=max(n, 1)))

    def __call__(self, body: dict[str, Any]):
        from tests.tgi_server import Reply

        messages = body.get("messages") or []
        system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
        role = next((name for name, marker in ROLE_MARKERS.items() if marker in system), None)
        if role is None:
            return Reply(json.dumps({"error": "no role marker in the system prompt"}), completion_tokens=8)
        if role == "judge" and "REFERENCE ANSWER" not in messages[-1].get("content", ""):
            role = "solver"
        length = self._next_length(role)
        key = json.dumps([messages, body.get("seed")], sort_keys=True).encode()
        rng = random.Random(hashlib.sha256(key).digest())
        # As many options as the recipe asks for: the Attacker's prompt names the last letter, the others' prompts list them.
        user = messages[1].get("content", "") if len(messages) > 1 else ""
        last = re.search(r"one of A, (?:[B-J], )*[B-J] or ([B-J])", user)
        letters = LETTERS[: LETTERS.index(last.group(1)) + 1] if last else LETTERS[: len(re.findall(r"(?m)^[A-J]\. ", user))] or "ABCDE"
        if role == "attacker":
            options = [self._words(rng, 2) for _ in letters]
            answer = {"question": f"{self._words(rng, 40)}?", "options": options, "explanation": "", "reference_answer": rng.choice(letters)}
            answer["explanation"] = self._words(rng, length - len(json.dumps(answer).split()))
        elif role in ("defender", "solver"):
            answer = {"reasoning": self._words(rng, length - 3), "program": "", "answer": rng.choice(letters)}
        else:
            answer = {"rationale": "", "question_valid": True, "defender_correct": rng.random() < 0.5}
            answer.update({name: 4 for name in self.criteria})
            answer["complexity"] = rng.randint(2, 4)
            answer["rationale"] = self._words(rng, length - len(json.dumps(answer).split()))
        return Reply(json.dumps(answer), completion_tokens=length)


def serve(settings: dict[str, Any]) -> None:
    """The server process: start the server, print its URL, then answer `stats` / `reset` / `close` lines on stdin."""
    from tests.tgi_server import ScriptedTGI

    workload = RoleWorkload(settings["domain"], settings["lengths"])
    with ScriptedTGI(responder=workload, latency=settings["latency"], token_latency=settings["token_latency"], capacity=settings["capacity"]) as server:
        print(json.dumps({"url": server.url}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                stats = EndpointStats(
                    requests=server.request_count,
                    service_seconds=server.service_seconds,
                    completion_tokens=server.completion_tokens,
                    max_concurrent=server.max_concurrent,
                    requests_by_role=workload.served,
                )
                print(json.dumps(dataclasses.asdict(stats)), flush=True)
            elif command == "reset":
                server.reset()
                workload.reset()
                print(json.dumps({"reset": True}), flush=True)
            else:
                break


class LoopbackEndpoint:
    """A `RoleWorkload` served by a ScriptedTGI in a child process. Use with `with`; `url` is its base URL."""

    def __init__(self, domain: str = "medical", *, latency: float, token_latency: float, capacity: int, lengths: dict[str, Sequence[int]] | None = None):
        self.settings = {
            "domain": domain,
            "lengths": {role: list(values) for role, values in (lengths or DEFAULT_LENGTHS).items()},
            "latency": latency,
            "token_latency": token_latency,
            "capacity": capacity,
        }
        self.url = ""
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> LoopbackEndpoint:
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loopback", json.dumps(self.settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root, env=env,
        )  # fmt: skip
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
        """Forget requests, service time and where each role's length cycle is (so the next client gets the same)."""
        self._ask("reset")

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._process.stdin.write("close\n")
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
