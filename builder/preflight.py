"""Checks of every input a build reads, run before any request is sent or any output folder is written.

`validate_inputs` turns a bad prompts folder, corpus, novelty bank, output folder or repo id into one ConfigError that
names the field (or file) and the fix, instead of a traceback mid-build.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder import roles
from builder.config import BuildConfig
from builder.corpus import Corpus, packaged_corpus
from builder.novelty import read_bank
from nanoflux.recipe import ConfigError, check_repo_id


def _prefixed(field: str, err: Exception) -> ConfigError:
    message = str(err)
    if not message.startswith(f"{field}:"):
        message = f"{field}: {message}"
    if "Fix:" not in message:
        message += f". Fix: correct {field} or remove it"
    return ConfigError(message)


def check_output_dir(path: str | Path) -> None:
    """`path` is a folder (or can be created as one) that this user can write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"output_dir: {path} is a file, not a folder (got {str(path)!r}). Fix: point output_dir at a folder (it is"
            " created if missing)"
        )
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise ConfigError(
            f"output_dir: {existing} is a file, so {path} cannot be created. Fix: choose an output_dir under a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output_dir: {existing} is not writable (got {str(path)!r}). Fix: choose a folder you can write, or fix"
            " its permissions"
        )


def validate_inputs(config: BuildConfig) -> None:
    """Prompts render, the corpus loads and has passages, the novelty bank reads, output_dir is a writable folder and
    push_to_hub a valid repo id: all before any request or output file. Raises ConfigError."""
    try:
        prompts = roles.load_prompts(config.domain, config.prompts)
        roles.check_templates(prompts, config.prompts or Path("builder/domains") / config.domain)
    except ValueError as err:
        raise _prefixed("prompts", err) from None
    try:
        Corpus.load(config.corpus or packaged_corpus(config.domain))
    except (ValueError, RuntimeError, OSError) as err:
        message = str(err)
        if config.corpus is None and "Fix:" not in message:
            message += ". Fix: set corpus to your own JSONL reference corpus"
        raise _prefixed("corpus", ValueError(message)) from None
    if config.novelty.bank:
        try:
            questions = read_bank(config.novelty.bank)
        except (ValueError, OSError) as err:
            raise _prefixed("novelty.bank", err) from None
        if not questions:
            raise ConfigError(
                f"novelty.bank: {config.novelty.bank} holds no questions. Fix: give it rows with a non-empty"
                ' "question", or remove novelty.bank'
            )
    check_output_dir(config.output_dir or f"outputs/{config.domain}")
    if config.push_to_hub is not None:
        check_repo_id("push_to_hub", config.push_to_hub)
