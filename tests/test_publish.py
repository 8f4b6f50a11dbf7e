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


class Target:
    """Where releases go: the Hub (HfApi with a token, HF_ENDPOINT = a LocalHub on loopback) or the local
    repository folder (`hub_dir`, published through an in-process LocalHub). Inspected through the real clients."""

    def __init__(self, kind: str, tmp_path, hub_endpoint, monkeypatch):
        self.kind, self.monkeypatch = kind, monkeypatch
        self.folder = tmp_path / ("hub" if kind == "hub" else "local-hub")
        self.server = LocalHub(self.folder, token=TOKEN if kind == "hub" else None).start()
        hub_endpoint(self.server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        self.api = HfApi(endpoint=self.server.url, token=TOKEN)

    def changes(self) -> dict:
        return {"push_to_hub": REPO} | ({"hub_dir": str(self.folder)} if self.kind == "local" else {})

    def publish(self, output_dir, **kwargs):
        return publish.main(str(output_dir), REPO, hub_dir=str(self.folder) if self.kind == "local" else None, **kwargs)

    def load(self, revision: str) -> list[dict]:
        if self.kind == "local":
            from builder.localhub import load_version

            return load_version(self.folder, REPO, revision).to_list()  # the README's one-liner
        return _load(revision)

    def tags(self) -> dict[str, str]:
        return {t.name: t.target_commit for t in self.api.list_repo_refs(REPO, repo_type="dataset").tags}

    def fail_next_commit(self) -> None:
        if self.kind == "hub":
            self.server.fail_next("POST", r"/api/datasets/.*/commit/", status=500)
            return
        original, armed = LocalHub.start, [True]

        def start(hub):  # the in-process LocalHub that `hub_dir` publishing starts: its first commit fails
            started = original(hub)
            if armed.pop() if armed else False:
                started.fail_next("POST", r"/api/datasets/.*/commit/", status=500)
            return started

        self.monkeypatch.setattr(LocalHub, "start", start)


@pytest.fixture(params=["hub", "local"])
def target(request, tmp_path, hub_endpoint, monkeypatch):
    t = Target(request.param, tmp_path, hub_endpoint, monkeypatch)
    yield t
    t.server.close()


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


def test_two_builds_publish_v1_and_v2_and_each_version_loads_exactly_its_rows(tgi, target, tmp_path):
    first = build.main(_config(tgi.url, tmp_path / "b1", **target.changes()))
    assert first["release"]["version"] == "v1" and first["release"]["new_rows"] == 2

    second = build.main(_later(tgi.url, tmp_path / "b2", **target.changes()))
    # v1's questions were in the novelty bank: the cardiology level-2 attack repeats a v1 row and is dropped before
    # judging (level 3 repeats a question that v1 did not keep, so it is new to the repo and judged again).
    assert second["not_novel"] == 1 and second["kept"] == 4
    assert second["release"] == {"repo_id": REPO, "version": "v2", "commit": second["release"]["commit"], "num_rows": 6, "new_rows": 4}

    v1, v2 = target.load("v1"), target.load("v2")
    expected_v1 = [scripted_roles.QUESTIONS[2], scripted_roles.QUESTIONS[0]]
    assert [r["question"] for r in v1] == expected_v1 and {r["version"] for r in v1} == {"v1"}
    assert [r["question"] for r in v2[:2]] == expected_v1
    assert sorted(r["question"] for r in v2[2:]) == sorted(scripted_roles.LATER_QUESTIONS.values())
    assert [r["version"] for r in v2] == ["v1", "v1", "v2", "v2", "v2", "v2"]
    assert target.load("main") == v2
    assert target.tags() == {"v1": first["release"]["commit"], "v2": second["release"]["commit"]}


def test_rerunning_a_build_never_readmits_a_near_duplicate_of_an_earlier_version(tgi, target, tmp_path):
    build.main(_config(tgi.url, tmp_path / "b1", **target.changes()))
    again = build.main(_config(tgi.url, tmp_path / "b1-again", **target.changes()))
    # Both kept questions of v1 come back and are dropped before anyone answers them; nothing new, no v2.
    assert again["not_novel"] >= 4 and again["release"] is None
    assert list(target.tags()) == ["v1"] and len(target.load("main")) == 2

    # Publishing the first build again (no novelty filter ran against v1 then) still adds nothing.
    assert target.publish(tmp_path / "b1") is None


def test_a_publish_whose_commit_fails_leaves_no_version_and_the_retry_publishes_it_once(tgi, target, tmp_path, allow_loopback_offline):
    build.main(_config(tgi.url, tmp_path / "b1"))  # built, not published
    target.fail_next_commit()
    with pytest.raises(publish.PublishError, match="no version was created.*nanoflux publish"):
        target.publish(tmp_path / "b1")
    assert target.tags() == {}

    release = target.publish(tmp_path / "b1")
    assert release.version == "v1" and target.tags() == {"v1": release.commit}
    assert [r["question"] for r in target.load("v1")] == [scripted_roles.QUESTIONS[2], scripted_roles.QUESTIONS[0]]
    titles = [c.title for c in target.api.list_repo_commits(REPO, repo_type="dataset")]
    assert sum(title.startswith("NanoFlux v1") for title in titles) == 1


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


def test_a_tag_that_exists_already_fails_before_any_upload(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    build.main(_config(tgi.url, tmp_path / "b1", push_to_hub=REPO))
    api = HfApi(endpoint=hub.url, token=TOKEN)
    commits = len(api.list_repo_commits(REPO, repo_type="dataset"))
    stale = publish.Previous()  # computed before someone else published v1
    with pytest.raises(publish.PublishError, match="already has tag v1.*--overwrite"):
        publish.publish(tmp_path / "b1", REPO, api=api, previous=stale)
    assert len(api.list_repo_commits(REPO, repo_type="dataset")) == commits
