"""Versioned releases against a Hub-compatible server on loopback: real HfApi, real load_dataset."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import DatasetCard, HfApi

from builder import build, publish
from builder.config import BuildConfig, from_dict
from builder.localhub import LocalHub
from tests import scripted_roles
from tests.tgi_server import ScriptedTGI

# huggingface_hub's LFS upload passes a file object as `data=`, which httpx2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "org/nanoflux-medical"
TOKEN = "hf_FAKEwriteTOKEN0123456789abcdef"


@pytest.fixture
def tgi():
    with ScriptedTGI(responder=scripted_roles.respond) as server:
        yield server


@pytest.fixture
def hub(tmp_path, hub_endpoint):
    with LocalHub(tmp_path / "hub", token=TOKEN) as server:
        hub_endpoint(server.url)
        yield server


def _config(url: str, output_dir, **changes) -> BuildConfig:
    config = from_dict(BuildConfig, scripted_roles.recipe(url, str(output_dir), **changes))
    config.validate()
    return config


def _later(url: str, output_dir, **changes) -> BuildConfig:
    """A second build: two new capabilities plus one whose questions are already in v1."""
    return _config(url, output_dir, capabilities=[*scripted_roles.LATER_CAPABILITIES, "cardiology"], rounds=1, attacks_per_round=6, **changes)


def _load(revision: str) -> list[dict]:
    from datasets import load_dataset

    return load_dataset(REPO, revision=revision, split="train").to_list()


def test_two_builds_publish_v1_and_v2_and_each_version_loads_exactly_its_rows(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    first = build.main(_config(tgi.url, tmp_path / "b1", push_to_hub=REPO))
    assert first["release"]["version"] == "v1" and first["release"]["new_rows"] == 2

    second = build.main(_later(tgi.url, tmp_path / "b2", push_to_hub=REPO))
    # v1's questions were in the novelty bank: the cardiology level-2 attack repeats a v1 row and is dropped before
    # judging (level 3 repeats a question that v1 did not keep, so it is new to the repo and judged again).
    assert second["not_novel"] == 1 and second["kept"] == 4
    assert second["release"] == {"repo_id": REPO, "version": "v2", "commit": second["release"]["commit"], "num_rows": 6, "new_rows": 4}

    v1, v2 = _load("v1"), _load("v2")
    expected_v1 = [scripted_roles.QUESTIONS[2], scripted_roles.QUESTIONS[0]]
    assert [r["question"] for r in v1] == expected_v1 and {r["version"] for r in v1} == {"v1"}
    assert [r["question"] for r in v2[:2]] == expected_v1
    assert sorted(r["question"] for r in v2[2:]) == sorted(scripted_roles.LATER_QUESTIONS.values())
    assert [r["version"] for r in v2] == ["v1", "v1", "v2", "v2", "v2", "v2"]
    assert _load("main") == v2

    refs = HfApi(endpoint=hub.url, token=TOKEN).list_repo_refs(REPO, repo_type="dataset")
    assert sorted(t.name for t in refs.tags) == ["v1", "v2"]
    assert {t.name: t.target_commit for t in refs.tags}["v2"] == second["release"]["commit"]


def test_each_release_is_one_commit_with_data_card_config_and_provenance(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    release = build.main(_config(tgi.url, tmp_path / "b1", push_to_hub=REPO))["release"]
    api = HfApi(endpoint=hub.url, token=TOKEN)
    commits = api.list_repo_commits(REPO, repo_type="dataset")
    assert commits[0].commit_id == release["commit"] and commits[0].title.startswith("NanoFlux v1")
    files = sorted(api.list_repo_files(REPO, repo_type="dataset", revision="v1"))
    assert files == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet", "nanoflux_config.yaml", "provenance.json"] or files == [
        "README.md", "data/train-00000-of-00001.parquet", "nanoflux_config.yaml", "provenance.json"
    ]

    card = DatasetCard.load(api.hf_hub_download(REPO, "README.md", repo_type="dataset", revision="v1"))
    assert {"synthetic", "nanoflux", "medical"} <= set(card.data.tags)
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    assert card.data.license == "apache-2.0" and card.data.size_categories == ["n<1K"]
    for text in ('revision="v1"', "| 8 | 8 | 6 | 3 | 2 |", "not medical advice", "arXiv:2509.23252", "--push_to_hub org/nanoflux-medical", "v1: 2 new rows"):
        assert text in card.text, text

    provenance = json.loads(open(api.hf_hub_download(REPO, "provenance.json", repo_type="dataset", revision="v1")).read())
    assert provenance["version"] == "v1" and provenance["parent"] is None and provenance["rows"] == 2
    assert provenance["roles"]["judge"]["generation"]["temperature"] == 0.0
    assert set(provenance["prompt_hashes"]) == {"attacker", "defender", "judge", "rubric"}
    assert provenance["packages"]["datasets"] and provenance["novelty"]["threshold"] == 0.85
    config = yaml.safe_load(open(api.hf_hub_download(REPO, "nanoflux_config.yaml", repo_type="dataset", revision="v1")).read())
    assert config["rounds"] == 2 and config["player_a"]["token_env"] == "HF_TOKEN"


def test_a_failed_commit_leaves_no_version_and_publishing_again_makes_it(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    build.main(_config(tgi.url, tmp_path / "b1"))  # built, not published
    hub.fail_next("POST", r"/api/datasets/.*/commit/", status=500, times=1)
    with pytest.raises(publish.PublishError, match="no version was created.*nanoflux publish"):
        publish.main(str(tmp_path / "b1"), REPO)
    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.list_repo_refs(REPO, repo_type="dataset").tags == []

    release = publish.main(str(tmp_path / "b1"), REPO)
    assert release.version == "v1" and [r["question"] for r in _load("v1")] == [scripted_roles.QUESTIONS[2], scripted_roles.QUESTIONS[0]]


def test_a_failed_tag_leaves_no_version_and_publishing_again_tags_a_complete_commit(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    build.main(_config(tgi.url, tmp_path / "b1"))
    hub.fail_next("POST", r"/api/datasets/.*/tag/", status=500, times=1)
    with pytest.raises(publish.PublishError):
        publish.main(str(tmp_path / "b1"), REPO)
    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.list_repo_refs(REPO, repo_type="dataset").tags == []
    release = publish.main(str(tmp_path / "b1"), REPO)
    assert release.version == "v1" and release.num_rows == 2


def test_overwrite_publishes_the_latest_tag_again_on_a_new_commit(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    first = build.main(_config(tgi.url, tmp_path / "b1", push_to_hub=REPO))["release"]
    again = publish.main(str(tmp_path / "b1"), REPO, overwrite=True)
    assert again.version == "v1" and again.num_rows == 2 and first["version"] == "v1"
    tags = HfApi(endpoint=hub.url, token=TOKEN).list_repo_refs(REPO, repo_type="dataset").tags
    assert [(t.name, t.target_commit) for t in tags] == [("v1", again.commit)]


def test_preflight_fails_before_any_model_call_when_the_token_cannot_write(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(publish.PublishError, match="repo_id: cannot write to dataset repo org/nanoflux-medical"):
        build.main(_config(tgi.url, tmp_path / "b1", push_to_hub=REPO))
    assert tgi.request_count == 0 and not (tmp_path / "b1" / "calls.jsonl").exists()
    with pytest.raises(publish.PublishError, match="org/name"):
        build.main(_config(tgi.url, tmp_path / "b1", push_to_hub="no-slash"))


def test_unfinished_build_is_refused_before_touching_the_repo(hub, tmp_path):
    with pytest.raises(publish.PublishError, match="not a finished build"):
        publish.main(str(tmp_path / "nothing"), REPO)
    assert not any("/api/" in path for _, path in hub.request_log)


def test_no_secret_reaches_any_uploaded_file(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    secret_url = "http://user:s3cretpass@127.0.0.1:{port}/?api_key=s3cretkey"
    port = tgi.url.rsplit(":", 1)[1]
    role = {**scripted_roles.recipe(tgi.url, "")["player_a"], "base_url": secret_url.format(port=port)}
    build.main(_config(tgi.url, tmp_path / "b1", player_a=role, push_to_hub=REPO))
    api = HfApi(endpoint=hub.url, token=TOKEN)
    for name in api.list_repo_files(REPO, repo_type="dataset", revision="v1"):
        content = open(api.hf_hub_download(REPO, name, repo_type="dataset", revision="v1"), "rb").read()
        for secret in (TOKEN, "s3cretpass", "s3cretkey"):
            assert secret.encode() not in content, (name, secret)


def test_the_local_repository_folder_gets_the_same_layout_and_tags(tgi, tmp_path, allow_loopback_offline):
    hub_dir = tmp_path / "hub"
    build.main(_config(tgi.url, tmp_path / "b1", push_to_hub=REPO, hub_dir=str(hub_dir)))
    build.main(_later(tgi.url, tmp_path / "b2", push_to_hub=REPO, hub_dir=str(hub_dir)))
    from builder.localhub import load_version

    assert len(load_version(hub_dir, REPO, "v1")) == 2
    assert len(load_version(hub_dir, REPO, "v2")) == 6
