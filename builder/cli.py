"""The `nanoflux` command: one subcommand per stage, each stage's `main()` in its own module."""

from __future__ import annotations

import argparse
import logging
import sys

from builder.config import ConfigError, build_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nanoflux", description="NanoFlux: adversarial dual-LLM dataset building.")
    commands = parser.add_subparsers(dest="command", required=True)
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
    release.add_argument("output_dir", help="a finished build's output dir")
    release.add_argument("--repo_id", required=True, help="dataset repo, org/name")
    release.add_argument("--hub_dir", help="a local repository folder instead of the Hub")
    release.add_argument("--private", action="store_true", help="create the repo as private")
    release.add_argument("--overwrite", action="store_true", help="publish the latest version's tag again")
    for sub in (build, release):
        sub.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args, overrides = parser.parse_known_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2"):  # one INFO line per HTTP request drowns the build's own progress
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "build":
        try:
            config = build_config(args.config, overrides)
        except ConfigError as err:
            sys.exit(f"nanoflux build: invalid recipe: {err}")
        from builder.build import main as build_main
        from builder.publish import PublishError

        try:
            build_main(config, fresh=args.fresh)
        except PublishError as err:
            sys.exit(f"nanoflux build: {err}")
    elif args.command == "publish":
        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        from builder.publish import PublishError, main as publish_main

        try:
            release = publish_main(args.output_dir, args.repo_id, hub_dir=args.hub_dir, private=args.private, overwrite=args.overwrite)
        except PublishError as err:
            sys.exit(f"nanoflux publish: {err}")
        if release:
            print(f"{release.repo_id} {release.version}: {release.num_rows} rows ({release.new_rows} new), commit {release.commit}")


if __name__ == "__main__":
    main()
