from pathlib import Path

import pytest
import yaml

from builder.config import BuildConfig, build_config
from nanoflux.recipe import ConfigError, parse_overrides

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", CONFIGS, ids=lambda p: p.name)
def test_every_packaged_recipe_loads_and_validates(recipe):
    config = build_config(recipe)
    assert isinstance(config, BuildConfig)
    assert config.capabilities and config.output_dir


def test_cli_overrides_win_over_the_recipe_including_nested_fields():
    config = build_config(
        "configs/medical.yaml",
        [
            "--rounds",
            "3",
            "--curation.target_size=150",
            "--judge.base_url",
            "http://localhost:8080",
            "--curation.quality_levels",
            "[3, 4]",
        ],
    )
    assert (config.rounds, config.curation.target_size) == (3, 150)
    assert config.judge.base_url == "http://localhost:8080"
    assert config.curation.quality_levels == [3, 4]
    assert config.player_a.model == "Qwen/Qwen2.5-72B-Instruct"  # untouched fields keep the recipe's value


def _write(tmp_path, data) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load(Path("configs/local.yaml").read_text())


@pytest.mark.parametrize(
    "change, field, fix",
    [
        ({"roundz": 3}, "roundz", "did you mean `rounds`"),
        ({"rounds": "three"}, "rounds", "write it as an integer"),
        ({"novelty": {"threshold": 1.5}}, "novelty.threshold", "<= 1.0"),
        ({"novelty": {"threshold": 0}}, "novelty.threshold", "> 0.0"),
        ({"player_a": {"backend": "endpoint", "model": None}}, "player_a", "set player_a.base_url"),
        ({"judge": {"backend": "embedded", "base_url": "localhost:8080"}}, "judge.base_url", "http://host:port"),
        ({"curation": {"quality_levels": [0, 4]}}, "curation.quality_levels", "1-5"),
        ({"capabilities": []}, "capabilities", "list the skills"),
        ({"domain": "law"}, "domain", "use one of math, science, medical"),
        ({"player_b": {"structured_output": "xml"}}, "player_b.structured_output", "json_schema"),
        ({"judge": {"temprature": 0.1}}, "judge.temprature", "did you mean `judge.temperature`"),
    ],
)
def test_malformed_recipe_fails_naming_the_field_the_value_and_the_fix(tmp_path, change, field, fix):
    data = _base()
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    with pytest.raises(ConfigError) as err:
        build_config(_write(tmp_path, data))
    message = str(err.value)
    assert message.startswith(field + ":") and "got" in message and fix in message, message


def test_missing_recipe_file_and_bad_override_syntax_are_clear_errors():
    with pytest.raises(ConfigError, match="recipe file not found"):
        build_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match="missing value"):
        parse_overrides(["--rounds"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["rounds=3"])


def test_output_dir_defaults_to_the_domain():
    config = build_config(
        None,
        [
            "--capabilities",
            "[x]",
            "--player_a.backend",
            "embedded",
            "--player_b.backend",
            "embedded",
            "--judge.backend",
            "embedded",
            "--allow_shared_judge",
            "true",
        ],
    )
    assert config.output_dir == "outputs/medical"
