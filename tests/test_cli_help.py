"""`nanoflux <stage> --help` lists the stage's recipe fields, generated from its config dataclass."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from nanoflux.cli import COMMANDS, load, main
from nanoflux.recipe_fields import field_docs, recipe_fields

RECIPES = {c.name: c.recipe for c in COMMANDS if c.recipe}


def _all_names(cls: type, prefix: str = "") -> list[str]:
    names = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        names.append(prefix + f.name)
        for arg in typing.get_args(hints[f.name]) or (hints[f.name],):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                names.extend(_all_names(arg, f"{prefix}{f.name}."))
    return names


@pytest.mark.parametrize("stage", sorted(RECIPES))
def test_help_lists_every_recipe_field_with_its_description(stage, capsys):
    cls = load(RECIPES[stage])
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    listed = {
        line.split(" = ")[0].strip()
        for line in out.splitlines()
        if line.startswith("  ") and not line.startswith("      ")
    }
    missing = [field for field in _all_names(cls) if field not in listed]
    assert not missing, f"`nanoflux {stage} --help` does not list {missing}"
    # Descriptions come from the attribute docstrings, not a copy kept elsewhere.
    documented = [(n, doc) for n, _, doc in recipe_fields(cls) if doc]
    assert documented, f"{cls.__name__} has no documented field"
    field_name, doc = documented[0]
    assert doc.split()[0] in out.split(f"  {field_name}", 1)[1]


def test_train_help_names_the_backend_field_and_its_values(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "  jobs.backend = 'local'" in out
    assert "jobs" in out.split("  jobs.backend = 'local'", 1)[1].split("\n  ")[1]


def test_field_docs_reads_the_string_after_each_annotation():
    @dataclasses.dataclass
    class Recipe:
        size: int = 3
        """How many."""
        name: str = "x"
        plain: bool = False
        """Spread over
        two lines."""

    assert field_docs(Recipe) == {"size": "How many.", "plain": "Spread over two lines."}
    assert recipe_fields(Recipe) == [
        ("size", "3", "How many."),
        ("name", "'x'", ""),
        ("plain", "False", "Spread over two lines."),
    ]


def test_build_help_does_not_import_the_trainer():
    code = (
        "import sys\nfrom nanoflux.cli import main\ntry:\n    main(['build', '--help'])\nexcept SystemExit:\n   "
        " pass\nprint(any(m.startswith('trainer') or m == 'trl' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
