"""The build folder as one type: its files named once, finished or not, its parts written and read back; and
`target_size` in the curation policy, with recipes, build folders and published versions from before the move."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from builder import BuildFolder, build, publish
from builder.build_folder import migrate_config
from builder.config import BuildConfig, build_config
from builder.dataset import to_dataset
from localhub import RepoStore
from nanoflux.recipe import ConfigError, from_dict
from tests import scripted_roles
from tests.tgi_server import ScriptedTGI

pytestmark = [
    pytest.mark.usefixtures("allow_loopback_offline"),
    # huggingface_hub's LFS upload passes a file object as `data=`, which httpx2 deprecates: not ours to fix.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

REPO = "org/nanoflux-medical"


def _row(i: int) -> dict:
    return {
        "id": f"r00-a{i:04d}",
        "round": 0,
        "attack_index": i,
        "question": f"Question {i}?",
        "options": ["a", "b", "c", "d"],
        "reference_answer": "A",
        "explanation": "Because.",
    }


# --- the layout ------------------------------------------------------------------------------------------


def test_the_folder_names_every_file_once_and_says_what_an_unfinished_build_lacks(tmp_path):
    folder = BuildFolder(tmp_path / "out")
    assert folder == BuildFolder(str(tmp_path / "out")) and str(folder) == str(tmp_path / "out")
    assert BuildFolder.DATA == "data/train-00000-of-00001.parquet"  # also its path in a published version
    assert (BuildFolder.POOL_DATA, BuildFolder.CURATED, BuildFolder.POOL) == (
        "pool/pool.parquet",
        "curated.jsonl",
        "pool.jsonl",
    )
    assert not folder.finished and folder.missing() == ["config.yaml", "summary.json", "curated.jsonl"]

    folder.write_config({"domain": "medical", "curation": {"target_size": 2}})
    folder.write_summary({"kept": 2})
    assert folder.missing() == ["curated.jsonl"]
    rows = [_row(0), _row(1)]
    folder.write_curated(rows)
    folder.write_pool([*rows, _row(2)])
    folder.write_contamination([])
    assert folder.finished and folder.missing((BuildFolder.POOL_DATA, BuildFolder.CONTAMINATED)) == []

    assert folder.read_config() == {"domain": "medical", "curation": {"target_size": 2}}
    assert folder.read_summary() == {"kept": 2}
    assert [r["id"] for r in folder.read_curated()] == ["r00-a0000", "r00-a0001"]
    assert [r["id"] for r in folder.read_pool()] == ["r00-a0000", "r00-a0001", "r00-a0002"]
    assert (tmp_path / "out" / "data" / "train-00000-of-00001.parquet").is_file()
    assert (tmp_path / "out" / "pool.jsonl").read_text().count("\n") == 3

    # A fresh build discards the outputs, nothing else.
    (tmp_path / "out" / "notes.txt").write_text("mine")
    folder.discard_outputs()
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["data", "notes.txt", "pool"]


# --- target_size in the curation policy ------------------------------------------------------------------


def test_a_saved_config_from_before_the_move_reads_as_todays():
    old = {"domain": "medical", "target_size": 50, "curation": {"quality_levels": [4]}, "seed": 0}
    assert migrate_config(old) == {
        "domain": "medical",
        "curation": {"quality_levels": [4], "target_size": 50},
        "seed": 0,
    }
    assert list(migrate_config(old)) == ["domain", "curation", "seed"]  # the keys keep their order
    assert old["target_size"] == 50  # the caller's dict is left alone
    today = {"domain": "medical", "curation": {"target_size": 7}}
    assert migrate_config(today) is today
    assert migrate_config({"target_size": 3})["curation"] == {"target_size": 3}  # no curation block: the defaults


@pytest.mark.parametrize(
    ("top_level", "overrides"),
    [({"target_size": 150}, []), ({}, ["--target_size", "150"])],
    ids=["recipe", "override"],
)
def test_a_recipe_with_a_top_level_target_size_fails_naming_the_new_key(tmp_path, top_level, overrides):
    data = yaml.safe_load(Path("configs/local.yaml").read_text()) | top_level
    data["curation"].pop("target_size")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        build_config(recipe, overrides)
    assert str(err.value) == (
        "target_size: no longer a top-level field (got 150). Fix: moved: set curation.target_size: 150 (on the command"
        " line: --curation.target_size 150)"
    )
    assert build_config("configs/local.yaml", ["--curation.target_size", "150"]).curation.target_size == 150


def test_target_size_stays_out_of_a_builds_identity():
    config = build_config("configs/local.yaml")
    bigger = build_config("configs/local.yaml", ["--curation.target_size", "3"])
    assert build.recipe_fingerprint(config, {})[0] == build.recipe_fingerprint(bigger, {})[0]
    assert "target_size" not in json.dumps(build.recipe_fingerprint(config, {})[1])


def test_an_older_build_folder_publishes_on_top_of_an_older_version(tmp_path, monkeypatch):
    """A build folder and a published version, both with a top-level target_size: the folder's limit holds, and the
    card sees no recipe change between them."""
    out, hub = tmp_path / "b1", tmp_path / "hub"
    with ScriptedTGI(responder=scripted_roles.respond) as server:
        data = scripted_roles.recipe(server.url, str(out), decontamination={"enabled": False})
        config = from_dict(BuildConfig, data)
        config.validate()
        summary = build.main(config)
    assert summary["kept"] >= 2

    folder = BuildFolder(out)
    saved = folder.read_config()
    old = {**saved, "target_size": 1, "curation": {k: v for k, v in saved["curation"].items() if k != "target_size"}}
    folder.file(BuildFolder.CONFIG).write_text(yaml.safe_dump(old, sort_keys=False))

    # v1: no rows, published with the older config layout.
    store = RepoStore(hub)
    store.create_repo("dataset", REPO)
    empty = io.BytesIO()
    to_dataset([]).to_parquet(empty)
    files = {
        BuildFolder.DATA: empty.getvalue(),
        "nanoflux_config.yaml": yaml.safe_dump(publish.public_config(old), sort_keys=False).encode(),
    }
    sha = store.create_commit("dataset", REPO, "main", add=files, title="NanoFlux v1")
    store.create_ref("dataset", REPO, "tags", "v1", sha)

    release = publish.main(str(out), REPO, hub_dir=str(hub))
    assert (release.version, release.num_rows) == ("v2", 1)  # the folder's target_size, not the default 200
    v2 = store.resolve("dataset", REPO, "v2")
    provenance = json.loads(store.read_file("dataset", REPO, v2, "provenance.json"))
    assert provenance["target_size"] == 1 and provenance["curation"]["target_size"] == 1
    card = store.read_file("dataset", REPO, v2, "README.md").decode()
    assert "recipe changes since v1: none" in card and "at most 1 rows per version" in card
    uploaded = yaml.safe_load(store.read_file("dataset", REPO, v2, "nanoflux_config.yaml"))
    assert "target_size" not in uploaded and uploaded["curation"]["target_size"] == 1
