"""A stage's recipe fields, listed for `nanoflux <stage> --help`, generated from its config dataclass.

The fields' descriptions are the attribute docstrings under each field (the project's convention), which Python does
not keep at run time; they are read from the class's source with `ast`. Nested dataclasses (`judge`, `novelty`, ...)
are listed with dotted names, which are also how a field is overridden on the command line (`--judge.base_url URL`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import MISSING
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: {field name: the string literal right after its annotation}."""
    docs: dict[str, str] = {}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a zipped install): fields are listed without descriptions
        return docs
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _nested_dataclass(annotation: Any) -> type | None:
    """The dataclass a field holds (also through `X | None`), else None."""
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _default(f: dataclasses.Field) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return ""
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def recipe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, description) for every field of `cls`, nested dataclasses expanded after their parent."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        name = f"{prefix}{f.name}"
        rows.append((name, _default(f), docs.get(f.name, "")))
        nested = _nested_dataclass(hints.get(f.name))
        if nested is not None:
            rows.extend(recipe_fields(nested, prefix=f"{name}."))
    return rows


def fields_help(cls: type, width: int = 100) -> str:
    """The `--help` epilog: every recipe field with its default and description, wrapped to `width`."""
    lines = ["recipe fields (YAML keys; override any with --<name> VALUE, nested ones as --<a>.<b> VALUE):"]
    for name, default, doc in recipe_fields(cls):
        head = f"  {name}" + (f" = {default}" if default else "")
        lines.append(head)
        if doc:
            lines.extend(textwrap.wrap(doc, width=width, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)
