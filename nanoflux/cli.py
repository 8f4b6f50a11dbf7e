"""The `nanoflux` command: a dispatch table over the stages' entry functions, one error handler for them all.

Each command names its stage's entry as `"module:function"`, imported only when that command runs (so `nanoflux
build` never pays for TRL's import). An entry takes the parsed arguments and the recipe overrides
(`--field value`) and returns nothing; the kernel imports no stage. A `NanoFluxError` is printed as one line
(`nanoflux <command>: <message>`) with a non-zero exit; anything else is a bug, and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from nanoflux.errors import NanoFluxError
from nanoflux.recipe import LOG_LEVELS


def _release_target(what: str, repo: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("output_dir", help=what)
        sub.add_argument("--repo_id", required=True, help=repo)
        sub.add_argument("--hub_dir", help="a local repository folder instead of the Hub")
        sub.add_argument("--private", action="store_true", help="create the repo as private")

    return add


def _recipe(example: str, fresh: str | None = None, detach: bool = False) -> Callable[[argparse.ArgumentParser], None]:
    def add(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", help=f"YAML recipe, e.g. {example}")
        if fresh:
            sub.add_argument("--fresh", action="store_true", help=fresh)
        if detach:
            sub.add_argument(
                "--detach", action="store_true", help="with --jobs.backend jobs: print the job id and return"
            )

    return add


def _publish_arguments(sub: argparse.ArgumentParser) -> None:
    _release_target("a finished build's output dir", "dataset repo, org/name")(sub)
    sub.add_argument("--overwrite", action="store_true", help="publish the latest version's tag again")


def _jobs_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("action", choices=["status", "logs"], help="status: stage, flavor, times; logs: the job's output")
    sub.add_argument("job_id")
    sub.add_argument("--namespace", help="user or org the job runs under (default: the token's user)")
    sub.add_argument("--follow", action="store_true", help="logs: stream until the job ends")


def _doctor_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("output_dir", help="a build's or an evaluation's output dir")
    sub.add_argument("--repair", action="store_true", help="rewrite damaged journals keeping every intact record")


@dataclass(frozen=True)
class Command:
    """One subcommand: its stage's entry (`module:function`), its help, its arguments, and its recipe's dataclass."""

    name: str
    entry: str
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda sub: None)
    recipe: str | None = None
    """`module:Class` of the stage's config: `--help` lists its fields; the command takes `--field value` overrides."""


COMMANDS = (
    Command(
        "build",
        "builder.build:command",
        "run (or resume) a build",
        "Run or resume a build. Any recipe field can be overridden: --rounds 3 --judge.base_url URL.",
        _recipe("configs/local.yaml", fresh="discard the output dir's journal and start over"),
        "builder.config:BuildConfig",
    ),
    Command(
        "publish",
        "builder.publish:command",
        "publish (or retry publishing) a finished build as the next dataset version",
        "Publish a finished build: one commit (data, card, config, provenance), then a vN tag on it.",
        _publish_arguments,
    ),
    Command(
        "train",
        "trainer.train:command",
        "fine-tune a LoRA adapter on a pinned dataset version (TRL SFTTrainer + PEFT)",
        "Train a LoRA adapter. Override any recipe field: --sft.max_steps 3 --lora.r 16 --jobs.backend jobs.",
        _recipe("configs/train/local.yaml", detach=True),
        "trainer.train_config:TrainConfig",
    ),
    Command(
        "jobs",
        "trainer.jobs:command",
        "state and logs of a training run submitted with --jobs.backend jobs",
        "Show a Hugging Face Job's state or stream its logs.",
        _jobs_arguments,
    ),
    Command(
        "eval",
        "trainer.evaluation.run:command",
        "evaluate the base model, base + adapter (and a baseline adapter) on benchmarks",
        "Evaluate on GSM-Hard / Genome-Bench / MultiMedQA. Override fields: --limit 50 --adapter DIR.",
        _recipe("configs/eval/local.yaml", fresh="discard the endpoint engine's answers journal and start over"),
        "trainer.evaluation.config:EvalConfig",
    ),
    Command(
        "publish-adapter",
        "trainer.train:publish_adapter_command",
        "push (or retry pushing) a trained adapter without retraining",
        "Upload a trained adapter's files and card to a model repo in one commit.",
        _release_target("a finished training run's output dir", "model repo, org/name"),
    ),
    Command(
        "sweep",
        "trainer.sweep.run:command",
        "ablations: curate, train and evaluate one cell per grid point of curation settings",
        "Run or resume an ablation sweep over one pool. Override fields: --grid.sizes [25,50] --publish_cell ID.",
        _recipe("configs/sweeps/local.yaml", fresh="discard the sweep folder's cells and start over"),
        "trainer.sweep.config:SweepConfig",
    ),
    Command(
        "doctor",
        "builder.runfolder:doctor_command",
        "check a build's or an evaluation's journals and state files; --repair keeps every intact record",
        "Report damaged journal lines (records lost, calls a resume sends again) and state files.",
        _doctor_arguments,
    ),
)
# `nanoflux space [...]` parses its own arguments (`nanoflux space --port N`, `nanoflux space deploy org/name`).
SPACE = Command(
    "space", "nanoflux.space:main", "run the Gradio Space locally, or `space deploy org/name` to a Space repo", ""
)


def load(reference: str) -> object:
    """`module:name` -> the object (the module is imported now)."""
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


class _StageParser(argparse.ArgumentParser):
    """A subcommand's parser; `--help` of a stage with a recipe lists the recipe's fields, generated from its config
    dataclass (imported only when help is asked for)."""

    recipe: str | None = None

    def format_help(self) -> str:
        if self.recipe is not None:
            from nanoflux.recipe_fields import fields_help

            self.epilog = fields_help(load(self.recipe))  # type: ignore[arg-type]
        return super().format_help()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="nanoflux", description="NanoFlux: adversarial dual-LLM dataset building and distillation."
    )
    subcommands = top.add_subparsers(dest="command", required=True, parser_class=_StageParser)
    for command in COMMANDS:
        sub = subcommands.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.arguments(sub)
        sub.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING, ...")
        sub.recipe = command.recipe
    subcommands.add_parser(SPACE.name, add_help=False, help=SPACE.help)
    return top


class _DropMessages(logging.Filter):
    """Drops a library logger's records that contain one of `fragments`."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def quiet_third_parties() -> None:
    """The console shows NanoFlux's own progress and messages only. Known third-party noise is silenced here, at the
    one place every stage starts, each for a stated reason; an environment variable the user set still wins."""
    # Progress bars of datasets' parquet writes and the Hub's downloads/uploads interleave with the stage's own bar.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # PEFT (not NanoFlux) still calls transformers' deprecated name on every adapter load.
    warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # Commits built from in-memory files (cards, parquet) take the HTTP upload path, which is right for them; the Hub
    # client warns once per commit that Xet storage is not used.
    logging.getLogger("huggingface_hub._commit_api").addFilter(_DropMessages("not supported by Xet Storage"))


def one_line(command: str, err: BaseException) -> str:
    """`nanoflux <command>: <message>` on one line."""
    from nanoflux.recipe import ConfigError

    message = " ".join(part.strip() for part in str(err).splitlines() if part.strip()) or type(err).__name__
    if isinstance(err, ConfigError):
        message = f"invalid recipe: {message}"
    return f"nanoflux {command}: {message}"


def _configure_logging(command: str, level: str) -> None:
    level = str(level).strip().upper()
    if level not in LOG_LEVELS:
        sys.exit(
            f"nanoflux {command}: --log_level: unknown level (got {level!r}). Fix: use one of {', '.join(LOG_LEVELS)}"
        )
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2"):  # one INFO line per HTTP request drowns the stage's own progress
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: list[str] | None = None) -> None:
    quiet_third_parties()
    top = parser()
    args, overrides = top.parse_known_args(argv)
    if args.command == SPACE.name:
        return load(SPACE.entry)(overrides)  # type: ignore[operator]
    command = next(c for c in COMMANDS if c.name == args.command)
    if overrides and command.recipe is None:
        top.error(f"unrecognized arguments: {' '.join(overrides)}")
    _configure_logging(command.name, args.log_level)
    try:
        load(command.entry)(args, overrides)  # type: ignore[operator]
    except Exception as err:
        if isinstance(err, ModuleNotFoundError) and not isinstance(err, NanoFluxError):
            from nanoflux.extras import hint_for

            hint = hint_for(err)  # an optional package of an install extra: name the extra, no traceback
            if hint:
                sys.exit(f"nanoflux {command.name}: {hint}")
        if not isinstance(err, NanoFluxError):
            raise  # a bug: its traceback is what a report needs
        sys.exit(one_line(command.name, err))


if __name__ == "__main__":
    main()
