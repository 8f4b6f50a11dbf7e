"""The build recipe: typed dataclasses loaded from YAML with CLI overrides.

Like TRL's `TrlParser`, a YAML recipe sets the values and `--field value` on the command line overrides them;
nested fields use dots (`--judge.base_url http://localhost:8080`). Unknown keys, wrong types and values out of
range fail here, before any model is loaded or any endpoint is called, with a message that names the field,
the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.build_folder import MOVED_KEYS
from builder.decontamination import DecontaminationConfig
from nanoflux.endpoints import STRUCTURED_OUTPUT_MODES
from nanoflux.recipe import (
    check_levels,
    check_range,
    check_repo_id,
    fail,
    from_dict,
    load_recipe,
    merge,
    parse_overrides,
    public_url,
)

PACKAGED_DOMAINS = ("math", "science", "medical")
BACKENDS = ("endpoint", "embedded")
ANSWER_FORMATS = ("number", "choice", "text")
JUDGE_TOOLS = ("python", "lookup")
TARGETING_POLICIES = ("adaptive", "round_robin")


MIN_WALL_SECONDS = 1.0
"""The sandbox starts a fresh, confined Python for each program; below about a second that start alone can use up the
wall clock, and every run of the Judge's tool would end as a timeout."""


@dataclass
class RoleConfig:
    """One LLM role: a TGI / OpenAI-compatible endpoint, a Hub model id, or the embedded model."""

    backend: str = "endpoint"
    """`endpoint` (HTTP: `base_url` and/or Hub `model` id) or `embedded` (the packaged SmolLM2 GGUF under a llama.cpp
    server that NanoFlux starts on loopback: builder/llama_engine.py)."""
    base_url: str | None = None
    """TGI, Inference Endpoint, vLLM or llama.cpp server URL, e.g. `http://localhost:8080`."""
    model: str | None = None
    """Hub model id (Inference Providers when no base_url; sent as the `model` field otherwise)."""
    token_env: str | None = None
    """Name of the environment variable that holds this endpoint's key (the key itself never goes in a recipe). A
    server that is not on a Hugging Face host gets a key only from here; null: Hugging Face hosts (Inference Providers,
    Inference Endpoints, Spaces) get the Hub login (HF_TOKEN or `hf auth login`), any other server gets no key."""
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float | None = None
    max_concurrency: int = 256
    """Upper bound on requests in flight to this endpoint. Below it NanoFlux seeks the server's capacity (more while
    answers keep their pace, fewer on 429/503, timeouts or slower tokens); roles on one endpoint share the smallest."""
    structured_output: str = "auto"
    """How to ask for JSON: `auto` (ask the server what it is, once), `openai` (json_schema: vLLM, OpenAI-compatible,
    Inference Providers), `tgi` (TGI's grammar), `llama_cpp` (llama.cpp's json_object + schema), `none` (no
    response_format; parse tolerantly). The old names `json_schema` and `json` still mean `openai` and `tgi`."""
    timeout: float = 120.0
    max_attempts: int = 6

    def validate(self, path: str) -> None:
        if self.backend not in BACKENDS:
            fail(f"{path}.backend", self.backend, "unknown backend", f"use one of {', '.join(BACKENDS)}")
        if self.backend == "endpoint" and not (self.base_url or self.model):
            fail(
                path,
                {"base_url": self.base_url, "model": self.model},
                "an endpoint role needs an endpoint",
                f"set {path}.base_url (a TGI/OpenAI-compatible server) or {path}.model (a Hub model id), "
                f"or {path}.backend: embedded to run the packaged model on this machine",
            )
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            fail(f"{path}.base_url", self.base_url, "not an http(s) URL", "write it as http://host:port")
        if self.structured_output not in (*STRUCTURED_OUTPUT_MODES, "json_schema", "json"):
            fail(
                f"{path}.structured_output",
                self.structured_output,
                "unknown mode",
                f"use one of {', '.join(STRUCTURED_OUTPUT_MODES)} (auto asks the server; json_schema and json are the "
                "old names of openai and tgi)",
            )
        if self.token_env is not None:
            if self.token_env.startswith(("hf_", "sk-")) or len(self.token_env) > 40:
                fail(
                    f"{path}.token_env",
                    "<hidden>",
                    "looks like a key, not the name of a variable",
                    f"export the key as a variable and write its name, e.g. {path}.token_env: ENDPOINT_KEY",
                )
            name = self.token_env
            if not (name and name.isascii() and name.replace("_", "a").isalnum() and not name[0].isdigit()):
                fail(
                    f"{path}.token_env",
                    self.token_env,
                    "not an environment variable name",
                    "use letters, digits and _, e.g. HF_TOKEN",
                )
        check_range(f"{path}.max_tokens", self.max_tokens, 16, 32768)
        check_range(f"{path}.temperature", self.temperature, 0.0, 2.0)
        if self.top_p is not None:
            check_range(f"{path}.top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_range(f"{path}.max_concurrency", self.max_concurrency, 1, 1024)
        check_range(f"{path}.timeout", self.timeout, 0.0, 3600.0, low_open=True)
        check_range(f"{path}.max_attempts", self.max_attempts, 1, 100)

    def same_model(self, other: RoleConfig) -> bool:
        """Both roles run the same model: same embedded model, or same model id (on any endpoint), or same URL."""
        if self.backend != other.backend:
            return False
        if self.backend == "embedded" or (self.model and self.model == other.model):
            return (self.model or "") == (other.model or "")
        return (
            bool(self.base_url)
            and not (self.model or other.model)
            and public_url(self.base_url) == public_url(other.base_url)
        )

    def display_id(self) -> str:
        """What the dataset records as this role's model: model id and/or URL (never a key: credentials and
        query strings are cut from the URL)."""
        if self.backend == "embedded":
            return f"{self.model or 'HuggingFaceTB/SmolLM2-135M-Instruct'} (embedded)"
        return " @ ".join(part for part in (self.model, public_url(self.base_url)) if part)


@dataclass
class NoveltyConfig:
    """Embedding-based novelty filter."""

    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    """sentence-transformers model id or local path; all-MiniLM-L6-v2 resolves to the packaged copy."""
    threshold: float = 0.85
    """A question whose cosine similarity to an earlier one is >= threshold is a near-duplicate."""
    bank: str | None = None
    """Optional JSONL/parquet file of earlier questions (a `question` column) to stay novel against."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.threshold", self.threshold, 0.0, 1.0, low_open=True)
        if self.bank is not None and not Path(self.bank).exists():
            fail(f"{path}.bank", self.bank, "file not found", "point it at a .jsonl or .parquet file, or remove it")


@dataclass
class CurationConfig:
    """Which judged examples make the dataset, and in which order of preference."""

    require_valid: bool = True
    """Keep only questions the Judge validated (its tools agreed with the reference answer)."""
    prefer_defender_failed: bool = True
    """Rank questions the Defender failed before the ones it solved."""
    quality_levels: list[int] = field(default_factory=lambda: [4])
    """Reasoning-quality levels to keep (L1..L5 are bands of the 1-5 judge score; L4 = 3.5-4.49)."""
    complexity_levels: list[int] | None = None
    """Judge-rated complexity levels (1-5) to keep; null keeps all."""
    balance_capabilities: bool = False
    """Take the ranked rows in turns across capabilities, so that no capability crowds the others out."""
    target_size: int = 200
    """Most examples kept, in rank order (the paper uses <= 200); a published version holds at most this many."""

    def validate(self, path: str) -> None:
        check_levels(f"{path}.quality_levels", self.quality_levels)
        if self.complexity_levels is not None:
            check_levels(f"{path}.complexity_levels", self.complexity_levels)
        check_range(f"{path}.target_size", self.target_size, 1, 100000)


@dataclass
class SandboxConfig:
    """Limits for the Judge's Python tool (untrusted code runs in a separate, locked-down process)."""

    wall_seconds: float = 5.0
    cpu_seconds: int = 3
    memory_mb: int = 512
    allow_unconfined: bool = False
    """Run the Judge's programs with the audit hook only when neither bubblewrap nor Landlock + seccomp is
    available. Off by default: the build then refuses to start; the hook alone is not a security boundary."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.wall_seconds", self.wall_seconds, 0.0, 600.0, low_open=True)
        if self.wall_seconds < MIN_WALL_SECONDS:
            fail(
                f"{path}.wall_seconds",
                self.wall_seconds,
                "too short to start Python in the sandbox (every program would time out)",
                f"use at least {MIN_WALL_SECONDS:g} (the default is 5)",
            )
        check_range(f"{path}.cpu_seconds", self.cpu_seconds, 1, 600)
        check_range(f"{path}.memory_mb", self.memory_mb, 32, 65536)


@dataclass
class BuildConfig:
    """A NanoFlux build: who plays, what they are asked, and what is kept."""

    domain: str = "medical"
    """Domain of the prompts and tools: math, science or medical (or your own with `prompts`)."""
    capabilities: list[str] = field(default_factory=list)
    """Reasoning skills the Attacker targets, cycled over the attacks of a round."""
    complexity_levels: list[int] = field(default_factory=lambda: [2, 3, 4])
    """Complexity levels (1-5) the Attacker is asked for, cycled over the attacks."""
    rounds: int = 4
    attacks_per_round: int = 50
    player_a: RoleConfig = field(default_factory=RoleConfig)
    """Attacks in even rounds (0, 2, ...), defends in odd ones."""
    player_b: RoleConfig = field(default_factory=RoleConfig)
    judge: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.0))
    novelty: NoveltyConfig = field(default_factory=NoveltyConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    """Drop rows that copy an evaluation benchmark's question (n-gram, number-masked and embedding matches) before
    curation, publishing and training; the benchmarks are those of `eval_recipe` (default
    configs/eval/<domain>.yaml)."""
    judge_tools: list[str] = field(default_factory=lambda: list(JUDGE_TOOLS))
    """Tools the Judge uses: `python` (runs the Attacker's verification code in the sandbox), `lookup` (corpus)."""
    prompts: str | None = None
    """Folder of prompt/rubric templates, laid out like builder/domains/<domain>/; null uses the packaged ones for
    `domain`."""
    corpus: str | None = None
    """Reference corpus (JSONL) for the Judge's lookup tool; null uses the packaged one for `domain`."""
    options: int = 5
    """Multiple choice: how many options (A, B, ...) each question has; match the target benchmark (MedQA,
    MedMCQA and MMLU have 4, Genome-Bench 5), so training shows the layout evaluation asks in."""
    feedback_examples: int = 6
    """Most judged questions the Attacker sees as feedback: the current Defender's results from earlier rounds."""
    feedback_tokens: int = 800
    """Token budget of that feedback (estimated at 4 characters a token); older results are left out first."""
    targeting: str = "adaptive"
    """How the Attacker's capability and complexity targets are chosen each round: `adaptive` (in proportion to the
    Defender's smoothed failure rate on each, with an `exploration` floor) or `round_robin` (a fixed cycle)."""
    exploration: float = 0.3
    """Adaptive targeting: the share of attacks spread evenly, so every capability and level keeps being probed."""
    allow_shared_judge: bool = False
    """Let the Judge be the same model as a player (it then grades its own questions); recorded in the card."""
    parse_retries: int = 1
    """Extra calls when a role's answer cannot be used (each with a new seed and the reason it was rejected)."""
    max_failed_share: float = 0.5
    """A build in which more than this share of the attacks failed for good exits non-zero with the cause."""
    answer_format: str = "choice"
    """Reference answers are a `number` (checked numerically), a `choice` letter A-E, or free `text`."""
    seed: int = 0
    push_to_hub: str | None = None
    """Publish the result as the next version of this dataset repo (`org/name`); pre-flight checks run first."""
    hub_dir: str | None = None
    """Publish to this local repository folder (the Hub's layout and tags, served by `localhub`) instead."""
    private: bool = False
    """Create the dataset repo as private."""
    output_dir: str | None = None
    """Where the journal and the dataset go; null means outputs/<domain>."""

    def validate(self) -> None:
        if self.output_dir is None:
            self.output_dir = f"outputs/{self.domain}"
        if self.answer_format not in ANSWER_FORMATS:
            fail("answer_format", self.answer_format, "unknown format", f"use one of {', '.join(ANSWER_FORMATS)}")
        if self.prompts is None and self.domain not in PACKAGED_DOMAINS:
            fail(
                "domain",
                self.domain,
                "no packaged prompts for this domain",
                f"use one of {', '.join(PACKAGED_DOMAINS)}, or set `prompts` to your own template folder",
            )
        if self.prompts is not None and not Path(self.prompts).is_dir():
            fail("prompts", self.prompts, "folder not found", "point it at a folder of templates")
        if self.corpus is not None and not Path(self.corpus).is_file():
            fail("corpus", self.corpus, "file not found", "point it at a JSONL corpus, or remove it")
        if not self.capabilities or not all(isinstance(c, str) and c.strip() for c in self.capabilities):
            fail("capabilities", self.capabilities, "needs at least one non-empty skill name", "list the skills")
        check_levels("complexity_levels", self.complexity_levels)
        unknown = [tool for tool in self.judge_tools if tool not in JUDGE_TOOLS]
        if unknown:
            fail("judge_tools", self.judge_tools, f"unknown tool(s) {unknown}", f"use a subset of {list(JUDGE_TOOLS)}")
        if self.answer_format == "number" and "python" not in self.judge_tools:
            fail("judge_tools", self.judge_tools, "numeric answers are verified by running code", "add python")
        check_range("rounds", self.rounds, 1, 1000)
        check_range("attacks_per_round", self.attacks_per_round, 1, 100000)
        check_range("feedback_examples", self.feedback_examples, 0, 50)
        check_range("feedback_tokens", self.feedback_tokens, 0, 100_000)
        check_range("options", self.options, 2, 10)
        if self.targeting not in TARGETING_POLICIES:
            fail("targeting", self.targeting, "unknown policy", f"use one of {', '.join(TARGETING_POLICIES)}")
        check_range("exploration", self.exploration, 0.0, 1.0)
        check_range("parse_retries", self.parse_retries, 0, 10)
        check_range("max_failed_share", self.max_failed_share, 0.0, 1.0)
        for name in ("player_a", "player_b", "judge"):
            getattr(self, name).validate(name)
        shared = [name for name in ("player_a", "player_b") if getattr(self, name).same_model(self.judge)]
        if shared and not self.allow_shared_judge:
            fail(
                "judge",
                self.judge.display_id(),
                f"the Judge is the same model as {' and '.join(shared)}, so it would grade its own questions",
                "give the Judge a different model (or endpoint), or set allow_shared_judge: true to accept it "
                "(the dataset card says so)",
            )
        self.novelty.validate("novelty")
        self.curation.validate("curation")
        self.sandbox.validate("sandbox")
        self.decontamination.validate("decontamination", domain=self.domain)
        if self.push_to_hub is not None:
            check_repo_id("push_to_hub", self.push_to_hub)
        if not str(self.output_dir).strip():
            fail(
                "output_dir", self.output_dir, "empty path", "name a folder, e.g. outputs/medical, or remove the field"
            )
        if self.hub_dir is not None and Path(self.hub_dir).is_file():
            fail(
                "hub_dir",
                self.hub_dir,
                "is a file, not a folder",
                "point it at a local repository folder (it is created if missing)",
            )


def check_moved_keys(data: dict[str, Any]) -> None:
    """Refuse a recipe key that moved (`MOVED_KEYS`), naming where it lives now, before the generic unknown-field
    error would hide the fix."""
    for key, now in MOVED_KEYS.items():
        if key in data:
            value = data[key]
            fail(
                key,
                value,
                "no longer a top-level field",
                f"moved: set {now}: {value} (on the command line: --{now} {value})",
            )


def build_config(recipe: str | Path | None, cli_args: list[str] | None = None) -> BuildConfig:
    """Recipe + CLI overrides → a validated BuildConfig."""
    data = merge(load_recipe(recipe), parse_overrides(cli_args or []))
    check_moved_keys(data)
    config = from_dict(BuildConfig, data)
    config.validate()
    return config
