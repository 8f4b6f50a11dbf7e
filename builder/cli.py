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
    build.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args, overrides = parser.parse_known_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command == "build":
        try:
            config = build_config(args.config, overrides)
        except ConfigError as err:
            sys.exit(f"nanoflux build: invalid recipe: {err}")
        from builder.build import main as build_main

        build_main(config, fresh=args.fresh)


if __name__ == "__main__":
    main()
