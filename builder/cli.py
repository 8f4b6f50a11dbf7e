"""The `nanoflux` command: one subcommand per stage, each stage's `main()` in its own module.

Stage modules are imported only when their subcommand runs, so `nanoflux build` never pays for TRL's import.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path

import yaml


class _StageParser(argparse.ArgumentParser):
    """A subcommand's parser; `--help` of a stage with a recipe lists the recipe's fields, generated from its config
    dataclass (imported only when help is asked for, so that `nanoflux build` never imports the trainer)."""

    recipe: tuple[str, str] | None = None

    def format_help(self) -> str:
        if self.recipe is not None:
            from builder.recipe_fields import fields_help

            module, name = self.recipe
            self.epilog = fields_help(getattr(importlib.import_module(module), name))
        return super().format_help()


# The config dataclass behind each stage's recipe.
RECIPES = {
    "build": ("builder.config", "BuildConfig"),
    "train": ("trainer.train", "TrainConfig"),
    "eval": ("trainer.evaluate", "EvalConfig"),
    "sweep": ("trainer.sweep_config", "SweepConfig"),
}


def _add_release_target(sub: argparse.ArgumentParser, what: str, repo: str) -> None:
    sub.add_argument("output_dir", help=what)
    sub.add_argument("--repo_id", required=True, help=repo)
    sub.add_argument("--hub_dir", help="a local repository folder instead of the Hub")
    sub.add_argument("--private", action="store_true", help="create the repo as private")


# Every error class of the project: its message says what is wrong and the fix, so the command prints it as one line and
# exits non-zero, never with a traceback. Looked up in sys.modules when an error is caught: a module that was never
# imported cannot have raised its error, and `nanoflux build` never pays for the trainer's imports.
PROJECT_ERRORS = (
    ("builder.config", "ConfigError"),
    ("builder.build", "BuildError"),
    ("builder.publish", "PublishError"),
    ("builder.runfolder", "RunFolderError"),
    ("builder.sandbox", "SandboxUnavailableError"),
    ("builder.decontamination", "DecontaminationError"),
    ("builder.chat", "EndpointError"),
    ("localhub.store", "HubError"),
    ("localhub.jobs", "JobError"),
    ("nanoflux.extras", "MissingExtraError"),
    ("trainer.rows", "EvalError"),
    ("trainer.train_data", "TrainError"),
    ("trainer.sweep_config", "SweepError"),
    ("trainer.jobs", "JobsError"),
    ("trainer.baseline", "TestRowsInTraining"),
)


def project_error(err: BaseException) -> bool:
    """`err` is one of the project's own error classes (a message meant for the user)."""
    for module, name in PROJECT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return True
    return False


def one_line(command: str, err: BaseException) -> str:
    """`nanoflux <command>: <message>` on one line."""
    from nanoflux.recipe import ConfigError

    message = " ".join(part.strip() for part in str(err).splitlines() if part.strip()) or type(err).__name__
    if isinstance(err, ConfigError):
        message = f"invalid recipe: {message}"
    return f"nanoflux {command}: {message}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoflux", description="NanoFlux: adversarial dual-LLM dataset building and distillation.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_StageParser)

    build = commands.add_parser(
        "build",
        help="run (or resume) a build",
        description="Run or resume a build. Any recipe field can be overridden: --rounds 3 --judge.base_url URL.",
    )
    build.add_argument("--config", help="YAML recipe, e.g. configs/local.yaml")
    build.add_argument("--fresh", action="store_true", help="discard the output dir's journal and start over")

    release = commands.add_parser(
        "publish",
        help="publish (or retry publishing) a finished build as the next dataset version",
        description="Publish a finished build: one commit (data, card, config, provenance), then a vN tag on it.",
    )
    _add_release_target(release, "a finished build's output dir", "dataset repo, org/name")
    release.add_argument("--overwrite", action="store_true", help="publish the latest version's tag again")

    train = commands.add_parser(
        "train",
        help="fine-tune a LoRA adapter on a pinned dataset version (TRL SFTTrainer + PEFT)",
        description="Train a LoRA adapter. Any recipe field can be overridden: --max_steps 3 --revision v2.",
    )
    train.add_argument("--config", help="YAML recipe, e.g. configs/train/local.yaml")
    train.add_argument("--detach", action="store_true", help="with --backend jobs: print the job id and return")

    jobs = commands.add_parser("jobs", help="state and logs of a training run submitted with --backend jobs")
    jobs.add_argument("action", choices=["status", "logs"], help="status: stage, flavor, times; logs: the job's output")
    jobs.add_argument("job_id")
    jobs.add_argument("--namespace", help="user or org the job runs under (default: the token's user)")
    jobs.add_argument("--follow", action="store_true", help="logs: stream until the job ends")

    evaluate = commands.add_parser(
        "eval",
        help="evaluate the base model, base + adapter (and a baseline adapter) on benchmarks",
        description="Evaluate on GSM-Hard / Genome-Bench / MultiMedQA. Override fields: --limit 50 --adapter DIR.",
    )
    evaluate.add_argument("--config", help="YAML recipe, e.g. configs/eval/local.yaml")

    adapter = commands.add_parser(
        "publish-adapter",
        help="push (or retry pushing) a trained adapter without retraining",
        description="Upload a trained adapter's files and card to a model repo in one commit.",
    )
    _add_release_target(adapter, "a finished training run's output dir", "model repo, org/name")

    sweep = commands.add_parser(
        "sweep",
        help="ablations: curate, train and evaluate one cell per grid point of curation settings, with a report",
        description="Run or resume an ablation sweep over one pool. Override fields: --grid.sizes [25,50] --publish_cell ID.",
    )
    sweep.add_argument("--config", help="YAML recipe, e.g. configs/sweeps/local.yaml")
    sweep.add_argument("--fresh", action="store_true", help="discard the sweep folder's cells and start over")

    doctor = commands.add_parser(
        "doctor",
        help="check a build folder's journals and state files; --repair keeps every intact record",
        description="Report damaged journal lines (records lost, calls a resume sends again) and state files.",
    )
    doctor.add_argument("output_dir", help="a build's output dir")
    doctor.add_argument("--repair", action="store_true", help="rewrite damaged journals keeping every intact record")

    for sub in (build, release, train, evaluate, adapter, sweep, jobs, doctor):
        sub.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    for name, sub in (("build", build), ("train", train), ("eval", evaluate), ("sweep", sweep)):
        sub.recipe = RECIPES[name]
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
    # nanoflux/space.py parses its own arguments (`nanoflux space [--port N]`, `nanoflux space deploy org/name`).
    commands.add_parser("space", add_help=False, help="run the Gradio Space locally, or `space deploy org/name` to a Space repo")
    return parser


class _DropMessages(logging.Filter):
    """Drops a library logger's records that contain one of `fragments`."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def quiet_third_parties() -> None:
    """The console shows NanoFlux's own progress and messages only. Known third-party noise is silenced here, at the one
    place every stage starts, each for a stated reason; an environment variable the user set still wins."""
    # Progress bars of datasets' parquet writes and the Hub's downloads/uploads interleave with the stage's own bar.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # PEFT (not NanoFlux) still calls transformers' deprecated name on every adapter load.
    warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # Commits built from in-memory files (cards, parquet) take the HTTP upload path, which is right for them; the Hub
    # client warns once per commit that Xet storage is not used.
    logging.getLogger("huggingface_hub._commit_api").addFilter(_DropMessages("not supported by Xet Storage"))


def main(argv: list[str] | None = None) -> None:
    quiet_third_parties()
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    if args.command == "space":
        from nanoflux.space import main as space_main

        return space_main(overrides)
    if overrides and args.command not in ("build", "train", "eval", "sweep"):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")

    from nanoflux.recipe import LOG_LEVELS

    level = str(args.log_level).strip().upper()
    if level not in LOG_LEVELS:
        sys.exit(f"nanoflux {args.command}: --log_level: unknown level (got {args.log_level!r}). Fix: use one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2"):  # one INFO line per HTTP request drowns the stage's own progress
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))

    try:
        if args.command == "doctor":
            from builder.runfolder import doctor

            report, healthy = doctor(args.output_dir, repair=args.repair)
            print(report)
            if not healthy:
                sys.exit(1)
        elif args.command == "sweep":
            from trainer.sweep import build_sweep_config, main as sweep_main

            sweep_main(build_sweep_config(args.config, overrides), fresh=args.fresh)
        elif args.command == "build":
            from builder.build import main as build_main
            from builder.config import build_config

            build_main(build_config(args.config, overrides), fresh=args.fresh)
        elif args.command == "publish":
            from builder.publish import main as publish_main

            release = publish_main(args.output_dir, args.repo_id, hub_dir=args.hub_dir, private=args.private, overwrite=args.overwrite)
            if release:
                print(f"{release.repo_id} {release.version}: {release.num_rows} rows ({release.new_rows} new), commit {release.commit}")
        elif args.command == "train":
            from trainer.jobs import main as jobs_main
            from trainer.train import build_train_config, main as train_main

            config = build_train_config(args.config, overrides)
            if config.backend == "jobs":
                job = jobs_main(config, detach=args.detach, on_log=print)
                print(f"job {job.id}: {job.status.stage} ({job.url})")
            else:
                train_main(config)
        elif args.command == "jobs":
            from huggingface_hub.errors import HfHubHTTPError

            from trainer.jobs import logs, status

            try:
                if args.action == "status":
                    print(yaml.safe_dump(status(args.job_id, namespace=args.namespace), sort_keys=False), end="")
                else:
                    for line in logs(args.job_id, namespace=args.namespace, follow=args.follow):
                        print(line, flush=True)
            except HfHubHTTPError as err:
                sys.exit(f"nanoflux jobs: job {args.job_id}: {str(err).splitlines()[0]}")
        elif args.command == "eval":
            from trainer.evaluate import build_eval_config, main as eval_main, write_model_index

            config = build_eval_config(args.config, overrides)
            results = eval_main(config)
            card = Path(config.adapter or "") / "README.md"
            if card.is_file() and "adapter" in results["variants"]:
                # A local adapter's card carries its own scores (model-index); `publish-adapter` then pushes them.
                write_model_index(card, results)
        elif args.command == "publish-adapter":
            from trainer.train import publish_adapter

            commit = publish_adapter(args.output_dir, args.repo_id, hub_dir=args.hub_dir, private=args.private)
            print(f"{args.repo_id}: adapter pushed, commit {commit}")
    except Exception as err:
        if isinstance(err, ModuleNotFoundError) and not project_error(err):
            from nanoflux.extras import hint_for

            hint = hint_for(err)  # an optional package of an install extra: name the extra, no traceback
            if hint:
                sys.exit(f"nanoflux {args.command}: {hint}")
        if not project_error(err):
            raise  # a bug: its traceback is what a report needs
        sys.exit(one_line(args.command, err))


if __name__ == "__main__":
    main()
