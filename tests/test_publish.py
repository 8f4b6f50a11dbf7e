"""Versioned releases against a Hub-compatible server on loopback: real HfApi, real load_dataset."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from huggingface_hub import DatasetCard, HfApi

import nanoflux.hub
from builder import build, dataset_card, publish
from builder.config import BuildConfig
from builder.decontamination import DecontaminationConfig
from localhub.testing import FaultyHub
from nanoflux.recipe import ConfigError, from_dict
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
    with FaultyHub(tmp_path / "hub", token=TOKEN) as server:
        hub_endpoint(server.url)
        yield server


class Target:
    """Where releases go: the Hub (HfApi with a token, HF_ENDPOINT = a LocalHub on loopback) or the local
    repository folder (`hub_dir`, published through an in-process LocalHub). Inspected through the real clients."""

    def __init__(self, kind: str, tmp_path, hub_endpoint, monkeypatch):
        self.kind, self.monkeypatch = kind, monkeypatch
        self.folder = tmp_path / ("hub" if kind == "hub" else "local-hub")
        self.server = FaultyHub(self.folder, token=TOKEN if kind == "hub" else None).start()
        hub_endpoint(self.server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        self.api = HfApi(endpoint=self.server.url, token=TOKEN)

    def changes(self) -> dict:
        return {"push_to_hub": REPO} | ({"hub_dir": str(self.folder)} if self.kind == "local" else {})

    def publish(self, output_dir, **kwargs):
        return publish.main(
            str(output_dir), REPO, hub_dir=str(self.folder) if self.kind == "local" else None, **kwargs
        )

    def load(self, revision: str) -> list[dict]:
        if self.kind == "local":
            from localhub import load_version

            return load_version(self.folder, REPO, revision).to_list()  # the README's one-liner
        return _load(revision)

    def tags(self) -> dict[str, str]:
        return {t.name: t.target_commit for t in self.api.list_repo_refs(REPO, repo_type="dataset").tags}

    def fail_next_commit(self) -> None:
        if self.kind == "hub":
            self.server.fail_next("POST", r"/api/datasets/.*/commit/", status=500)
            return
        armed = [True]

        class FirstCommitFails(
            FaultyHub
        ):  # the in-process Hub that `hub_dir` publishing starts: its first commit fails
            def start(self):
                started = super().start()
                if armed.pop() if armed else False:
                    started.fail_next("POST", r"/api/datasets/.*/commit/", status=500)
                return started

        self.monkeypatch.setattr(nanoflux.hub, "LocalHub", FirstCommitFails)


@pytest.fixture(params=["hub", "local"])
def target(request, tmp_path, hub_endpoint, monkeypatch):
    t = Target(request.param, tmp_path, hub_endpoint, monkeypatch)
    yield t
    t.server.close()


def _config(url: str, output_dir, **changes) -> BuildConfig:
    if "decontamination" in {f.name for f in dataclasses.fields(BuildConfig)}:
        # Offline: the medical default (MultiMedQA from the Hub) cannot load; the tests that check it set their own.
        changes.setdefault("decontamination", {"enabled": False})
    config = from_dict(BuildConfig, scripted_roles.recipe(url, str(output_dir), **changes))
    config.validate()
    return config


def _later(url: str, output_dir, **changes) -> BuildConfig:
    """A second build: two new capabilities plus one whose questions are already in v1."""
    return _config(
        url,
        output_dir,
        capabilities=[*scripted_roles.LATER_CAPABILITIES, "cardiology"],
        rounds=1,
        attacks_per_round=6,
        **changes,
    )


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
    assert second["release"] == {
        "repo_id": REPO,
        "version": "v2",
        "commit": second["release"]["commit"],
        "num_rows": 6,
        "new_rows": 4,
        "left_rows": 0,
        "contaminated_rows": 0,
    }

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
    # Both kept questions of v1 come back and are dropped before anyone answers them: nothing new, so the build says so
    # (non-zero) and no v2 is published.
    with pytest.raises(build.BuildError, match=r"nothing was kept: 8 generated, [4-8] near-duplicates"):
        build.main(_config(tgi.url, tmp_path / "b1-again", **target.changes()))
    assert json.loads((tmp_path / "b1-again" / "summary.json").read_text())["not_novel"] >= 4
    assert list(target.tags()) == ["v1"] and len(target.load("main")) == 2

    # Publishing the first build again (no novelty filter ran against v1 then) still adds nothing.
    assert target.publish(tmp_path / "b1") is None


def test_a_publish_whose_commit_fails_leaves_no_version_and_the_retry_publishes_it_once(
    tgi, target, tmp_path, allow_loopback_offline
):
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
    assert files == [
        ".gitattributes",
        "README.md",
        "data/train-00000-of-00001.parquet",
        "nanoflux_config.yaml",
        "provenance.json",
    ] or files == ["README.md", "data/train-00000-of-00001.parquet", "nanoflux_config.yaml", "provenance.json"]

    card = DatasetCard.load(api.hf_hub_download(REPO, "README.md", repo_type="dataset", revision="v1"))
    assert {"synthetic", "nanoflux", "medical"} <= set(card.data.tags)
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
    ]
    assert card.data.license == "apache-2.0" and card.data.size_categories == ["n<1K"]
    for text in (
        'revision="v1"',
        "| 8 | 8 | 6 | 4 | 3 | 2 | 2 |",
        "not medical advice",
        "arXiv:2509.23252",
        "### v1\n\n- 2 new rows, 2 in all; first version",
        "nanoflux publish nanoflux-medical-v1/build --repo_id org/nanoflux-medical\n",
    ):
        assert text in card.text, text
    assert "--push_to_hub" not in card.text  # the reproduce command rebuilds, it never publishes

    provenance = json.loads(
        open(api.hf_hub_download(REPO, "provenance.json", repo_type="dataset", revision="v1")).read()
    )
    assert provenance["version"] == "v1" and provenance["parent"] is None and provenance["rows"] == 2
    assert provenance["roles"]["judge"]["generation"]["temperature"] == 0.0
    assert {"attacker", "defender", "judge", "rubric"} <= set(provenance["prompt_hashes"])
    assert provenance["packages"]["datasets"] and provenance["novelty"]["threshold"] == 0.85
    config = yaml.safe_load(
        open(api.hf_hub_download(REPO, "nanoflux_config.yaml", repo_type="dataset", revision="v1")).read()
    )
    assert (
        config["rounds"] == 2 and "token_env" in config["player_a"] and TOKEN not in json.dumps(config)
    )  # the name, never the key
    assert config["push_to_hub"] is None and config["output_dir"] is None  # building from it never publishes


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
    with pytest.raises(ConfigError, match="push_to_hub: not a repo id .*org/name"):  # refused with the recipe itself
        _config(tgi.url, tmp_path / "b1", push_to_hub="no-slash")


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


# --- versions capped at target_size, decontamination ------------------------------------------------------


def _download(api: HfApi, name: str, revision: str) -> str:
    return open(api.hf_hub_download(REPO, name, repo_type="dataset", revision=revision), encoding="utf-8").read()


def test_a_rerun_recurates_the_union_and_never_publishes_more_than_target_size(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    build.main(_config(tgi.url, tmp_path / "b1", push_to_hub=REPO))  # v1: a Defender failure and a Defender success
    second = build.main(_later(tgi.url, tmp_path / "b2", push_to_hub=REPO, curation={"target_size": 3}))
    api = HfApi(endpoint=hub.url, token=TOKEN)
    v1, v2 = _load("v1"), _load("v2")
    failed, solved = v1  # v1 ranks its Defender failure first
    assert failed["defender_correct"] is False and solved["defender_correct"] is True

    # The union (2 + the build's 3) re-curated under the same policy: failures first, published ones before new ones.
    assert (
        second["release"]["num_rows"] == len(v2) == 3
        and second["release"]["new_rows"] == 2
        and second["release"]["left_rows"] == 1
    )
    assert v2[0] == failed and [r["version"] for r in v2] == ["v1", "v2", "v2"]  # the v1 row keeps its version
    assert all(r["defender_correct"] is False for r in v2)

    card = DatasetCard.load(api.hf_hub_download(REPO, "README.md", repo_type="dataset", revision="v2")).text
    changelog = card.split("## Changelog")[1].split("## Sample")[0]
    v2_section = changelog.split("### v2")[1].split("### v1")[0]
    lines = [line for line in v2_section.splitlines() if line.startswith("- ")]
    assert lines[0].startswith("- 2 new rows, 3 in all; builds on v1")
    assert f"- left since v1: 1 row outranked by new rows under the curation policy: {solved['id']}" in lines
    assert "- kept from v1: 1 of 2 rows" in lines
    assert "- rows of this build not published: 1 row outranked" in lines
    assert len(lines) == len(set(lines)) and "at most 3 rows per version" in card
    provenance = json.loads(_download(api, "provenance.json", "v2"))
    assert provenance["target_size"] == 3 and provenance["left"] == {
        "contaminated": [],
        "ineligible": [],
        "outranked": [solved["id"]],
    }
    assert provenance["decontamination"]["checked"] is False

    # Publishing the same build again changes nothing: no v3, and never more than target_size rows.
    assert publish.main(str(tmp_path / "b2"), REPO) is None
    assert [t.name for t in api.list_repo_refs(REPO, repo_type="dataset").tags] == ["v1", "v2"]


def _plant_benchmark(tmp_path, rows: list[dict]) -> str:
    """An evaluation recipe whose one benchmark (MedQA's schema) holds `rows`' questions verbatim, plus one
    unrelated."""
    items = [
        {
            "question": r["question"],
            "options": dict(zip("ABCDE", r.get("options") or ["yes", "no"], strict=False)),
            "answer_idx": "A",
        }
        for r in rows
    ]
    items.append(
        {
            "question": "Which vitamin deficiency causes scurvy in sailors?",
            "options": {"A": "C", "B": "D"},
            "answer_idx": "A",
        }
    )
    bench = tmp_path / "planted.jsonl"
    bench.write_text("".join(json.dumps(item) + "\n" for item in items))
    recipe = tmp_path / "planted-eval.yaml"
    recipe.write_text(
        yaml.safe_dump({"benchmarks": [{"format": "medqa", "name": "planted", "path": str(bench), "split": "test"}]})
    )
    return str(recipe)


def test_contaminated_rows_are_dropped_counted_in_the_card_and_listed_in_the_release(tgi, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    build.main(_config(tgi.url, tmp_path / "b1", push_to_hub=REPO))
    build.main(_later(tgi.url, tmp_path / "b2"))  # built, not published
    v1 = _load("v1")
    curated = [json.loads(line) for line in (tmp_path / "b2" / "curated.jsonl").read_text().splitlines()]
    # Not pushed, so the build's novelty bank lacked v1: one of its rows repeats a v1 question (publishing drops it).
    curated = [row for row in curated if row["question"] not in {r["question"] for r in v1}]
    # A benchmark that holds one v1 question and one of this build's, word for word.
    recipe = _plant_benchmark(tmp_path, [v1[1], curated[0]])
    config_path = tmp_path / "b2" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["decontamination"] = dataclasses.asdict(DecontaminationConfig(eval_recipe=recipe))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    release = publish.main(str(tmp_path / "b2"), REPO)
    assert (release.version, release.num_rows, release.new_rows, release.left_rows, release.contaminated_rows) == (
        "v2",
        4,
        3,
        1,
        2,
    )
    v2 = _load("v2")
    assert {r["question"] for r in v2}.isdisjoint({v1[1]["question"], curated[0]["question"]})
    assert v2[0] == v1[0] and [r["version"] for r in v2] == ["v1", "v2", "v2", "v2"]

    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert "contaminated.jsonl" in api.list_repo_files(REPO, repo_type="dataset", revision="v2")
    listed = [json.loads(line) for line in _download(api, "contaminated.jsonl", "v2").splitlines()]
    assert [(r["id"], r.get("version")) for r in listed] == [(v1[1]["id"], "v1"), (curated[0]["id"], None)]
    assert len({r["id"] for r in v1 + curated}) == len(v1) + len(curated)  # ids of two builds never collide
    assert {m["benchmark"] for r in listed for m in r["contamination"]} == {"planted"}
    released = _download(api, "contaminated.jsonl", "v2")
    assert (
        v1[1]["question"] not in released and "item_question" not in released
    )  # ids and scores only, no benchmark text
    local = [json.loads(line) for line in (tmp_path / "b2" / "release-contaminated.jsonl").read_text().splitlines()]
    assert [r["question"] for r in local] == [
        v1[1]["question"],
        curated[0]["question"],
    ]  # the texts stay in the build folder

    card = DatasetCard.load(api.hf_hub_download(REPO, "README.md", repo_type="dataset", revision="v2")).text
    assert "2 of 6 rows matched a benchmark question and were left out" in card
    assert (
        "by benchmark: planted 2" in card
        and "`planted` (planted.jsonl, test, 3 questions)" in card
        and "of `planted-eval.yaml`" in card
    )
    assert str(tmp_path) not in card and str(tmp_path) not in _download(
        api, "nanoflux_config.yaml", "v2"
    )  # no local paths
    assert f"- left since v1: 1 row matching an evaluation benchmark (see Decontamination): {v1[1]['id']}" in card
    assert (
        "- rows of this build not published: 1 row repeating an earlier version; 1 row matching an evaluation"
        " benchmark" in card
    )
    provenance = json.loads(_download(api, "provenance.json", "v2"))
    assert provenance["decontamination"]["contaminated"]["rows"] == 2 and provenance["left"]["contaminated"] == [
        v1[1]["id"]
    ]
    assert provenance["not_published"] == {"repeats": 1, "contaminated": 1, "outranked": 0}


def test_plan_release_ranks_the_union_and_says_why_each_earlier_row_left():
    def row(rid: str, question: str, *, correct: bool, level: int = 4, version: str | None = None) -> dict:
        return {
            "id": rid,
            "question": question,
            "version": version,
            "judge_status": "ok",
            "novel": True,
            "question_valid": True,
            "quality_level": level,
            "judge_complexity": 3,
            "defender_correct": correct,
            "round": 0,
            "attack_index": int(rid[-1]),
            "capability": "cardiology",
        }

    earlier = [
        row("r0-a0", "Which murmur accompanies aortic stenosis in an elderly patient?", correct=False, version="v1"),
        row(
            "r0-a1",
            "What electrolyte abnormality does loop diuretic therapy cause most often?",
            correct=True,
            version="v1",
        ),
        row(
            "r0-a2", "Which vaccine is contraindicated during pregnancy?", correct=False, level=3, version="v1"
        ),  # an older policy kept L3
    ]
    curated = [
        row(
            "r0-a0",
            "A child has a barking cough and a steeple sign on a neck X-ray; what is the diagnosis?",
            correct=False,
        ),
        row("r0-a1", "Which antibody is most specific for systemic lupus erythematosus?", correct=False),
    ]
    config = {
        "domain": "medical",
        "novelty": {"model": "sentence-transformers/all-MiniLM-L6-v2", "threshold": 0.85},
        "curation": {
            "require_valid": True,
            "prefer_defender_failed": True,
            "quality_levels": [4],
            "complexity_levels": None,
            "target_size": 3,
        },
    }
    plan = publish.plan_release(config, curated, earlier, "v2", decontamination=DecontaminationConfig(enabled=False))
    assert [publish.row_key(r) for r in plan.rows] == ["v1/r0-a0", "v2/r0-a0", "v2/r0-a1"]
    assert {reason: [r["id"] for r in rows] for reason, rows in plan.left.items()} == {
        "contaminated": [],
        "ineligible": ["r0-a2"],
        "outranked": ["r0-a1"],
    }
    assert plan.not_published == {"repeats": 0, "contaminated": 0, "outranked": 0} and plan.changed
    assert plan.decontamination.summary() == {
        "checked": False,
        "reason": "decontamination.enabled is false",
        "settings": dataclasses.asdict(DecontaminationConfig(enabled=False)),
    }

    previous = publish.Previous(1, "c0ffee" * 6 + "c0ff", earlier, None)
    lines = dataset_card.changelog("v2", config, plan, previous)
    assert lines == [
        "2 new rows, 3 in all; builds on v1 (commit c0ffeec0ffee)",
        "kept from v1: 1 of 3 rows",
        "left since v1: 1 row no longer eligible under this version's curation policy: v1/r0-a2",
        "left since v1: 1 row outranked by new rows under the curation policy: v1/r0-a1",
    ]
    # Nothing new and nothing left: the same version again, which publish() refuses as noise.
    same = publish.plan_release(
        {**config, "curation": {**config["curation"], "target_size": 1}},
        [],
        earlier[:1],
        "v2",
        decontamination=DecontaminationConfig(enabled=False),
    )
    assert same.rows == earlier[:1] and not same.changed
