"""Recipes: a YAML file + dotted CLI overrides -> a validated config dataclass, for every stage.

Like TRL's `TrlParser`, a YAML recipe sets the values and `--field value` on the command line overrides them;
nested fields use dots (`--judge.base_url http://localhost:8080`). Unknown keys, wrong types and values out of
range fail here, before any model is loaded or any endpoint is called, with a message that names the field,
the value and the fix. Numbers YAML 1.1 reads as text (`1e-4`) are coerced for float fields, for every stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml

from nanoflux.errors import NanoFluxError

Config = TypeVar("Config")


class ConfigError(NanoFluxError, ValueError):
    """A recipe or CLI value that cannot be used; the message says which field, what value, and the fix."""


def fail(path: str, value: Any, problem: str, fix: str) -> typing.NoReturn:
    shown = repr(value)
    if len(shown) > 200:  # a whole mapping pasted in the wrong place: the start says enough
        shown = shown[:200] + "..."
    raise ConfigError(f"{path}: {problem} (got {shown}). Fix: {fix}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def public_url(url: str | None) -> str | None:
    """`url` without credentials or query string: what may appear in logs, cards and uploaded files."""
    if not url:
        return url
    parts = urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_range(path: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    if not math.isfinite(value):  # NaN compares false with everything: it would pass every bound
        fail(path, value, "not a finite number", f"use a number between {low} and {high}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        fail(path, value, "out of range", f"use a value {bound} and <= {high}")


def is_repo_id(value: str) -> bool:
    """`org/name`: one slash, both parts non-empty."""
    return value.count("/") == 1 and all(part.strip() for part in value.split("/"))


def check_repo_id(path: str, value: str) -> None:
    if not is_repo_id(value):
        fail(path, value, "not a repo id", "write it as org/name")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as err:
        reason = str(err).splitlines()[0].rstrip(".")
        fail(
            path,
            value,
            f"not a valid Hub repo id ({reason})",
            "write it as org/name: letters, digits, '-', '_' and '.', no '..' or '--'",
        )


def check_levels(path: str, levels: list[int]) -> None:
    if not levels or any(
        isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 5 for level in levels
    ):
        fail(path, levels, "levels must be a non-empty list of integers 1-5", "e.g. [3, 4]")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, refusing unknown keys and wrong types."""
    where = prefix.rstrip(".")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(data, dict):
        example = ", ".join(f"{name}: ..." for name in list(fields)[:2])
        fail(
            where or "recipe",
            data,
            f"expected a mapping of fields, not {_kind(data)}",
            (
                f"write {where} as a mapping, e.g. {where}: {{{example}}}"
                if where
                else "write the recipe as `field: value` lines"
            ),
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean `{prefix}{close[0]}`?" if close else f"use one of the fields {', '.join(fields)}"
            fail(path, value, f"unknown field{f' of {where}' if where else ''}", hint)
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against type hint `tp` (and build nested dataclasses); ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{path}.")
    if origin is dict:  # a pass-through mapping (e.g. a trainer's `sft:`): its keys are checked by its owner
        if not isinstance(value, dict):
            fail(
                path, value, f"expected a mapping, not {_kind(value)}", f"write it as a mapping, e.g. {path}: {{a: 1}}"
            )
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            fail(path, value, f"expected a list, not {_kind(value)}", f"write it as a list, e.g. {path}: [a, b]")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as text
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        expected, example = _TYPE_WORDS.get(tp, (tp.__name__, "..."))
        fail(
            path,
            value,
            f"expected {expected}, not {_kind(value)}",
            f"write it as {expected}, e.g. {path.rsplit('.', 1)[-1]}: {example}",
        )
    return value


_TYPE_WORDS = {
    int: ("an integer", "3"),
    float: ("a number", "0.5"),
    str: ("a string", "text"),
    bool: ("true or false", "true"),
}


def _kind(value: Any) -> str:
    """What a YAML value is, in words."""
    if value is None:
        return "null (empty)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `--a.b value` / `--a.b=value` pairs into a nested dict; values are parsed as YAML scalars/lists."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            raise ConfigError(f"{token}: unexpected argument. Fix: pass recipe fields as --field value")
        key, sep, raw = token[2:].partition("=")
        if not sep:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"{key}: missing value. Fix: write --{key} VALUE")
            raw = args[i + 1]
            i += 1
        i += 1
        node = overrides
        *parents, leaf = key.replace("-", "_").split(".")
        if not key or not all(parents) or not leaf:
            raise ConfigError(
                f"--{key}: not a field name. Fix: write --field value or --section.field value, e.g."
                " --judge.base_url URL"
            )
        for part in parents:
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"--{key}: {part} was given a value and a sub-field. Fix: pass one of them")
            node = node[part]
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            raise ConfigError(
                f"--{key}: the value {raw!r} is not valid YAML ({problem}). Fix: quote it or correct the brackets"
            ) from None
    return overrides


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: override values win, nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML recipe as a dict (empty when no path)."""
    if path is None:
        return {}
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"--config: {path} is a folder, not a recipe file. Fix: pass a YAML file like configs/medical.yaml"
        )
    if not path.is_file():
        raise ConfigError(
            f"--config: recipe file not found (got {str(path)!r}). Fix: pass a path like configs/medical.yaml"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"--config: cannot read {path} ({type(err).__name__}: {err}). Fix: pass a readable UTF-8 YAML file"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"--config: {path} is not valid YAML{at} ({problem}). Fix: correct the YAML syntax there"
        ) from None
    if data is None:
        raise ConfigError(
            f"--config: {path} is empty. Fix: write the recipe's fields in it (start from configs/local.yaml)"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config: {path} must be a mapping of fields (got {_kind(data)}). Fix: write `field: value` lines, "
            "e.g. `domain: medical`, not a list or a bare value"
        )
    bad = [key for key in data if not isinstance(key, str)]
    if bad:
        raise ConfigError(
            f"--config: {path}: field names must be text (got {bad[0]!r}). Fix: use the field names of the recipe"
            " table"
        )
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data (for the saved recipe, the fingerprint and the dataset card)."""
    return dataclasses.asdict(config)


def changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`a.b: old -> new` for every leaf that differs between two config dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed


def load_config(cls: type[Config], recipe: str | Path | None, cli_args: list[str] | None = None) -> Config:
    """Recipe file + CLI overrides -> `cls`, validated (its `validate()` runs when it has one): every stage's
    loader."""
    data = merge(load_recipe(recipe), parse_overrides(cli_args or []))
    config = from_dict(cls, data)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config
