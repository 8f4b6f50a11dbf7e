"""LocalHub: a folder served as a Hugging Face Hub, driven by the real, unmodified huggingface_hub and datasets.

The `hub` fixture points every client at the server (see `point_clients_at`) while still refusing any other host,
so these tests stay offline.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, HfFileSystem
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from localhub import LocalHub, RepoStore
from localhub.testing import FaultyHub
from tests.hub_clients import point_clients_at

# huggingface_hub's LFS upload passes a file object as `data=`, which httpx2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

TOKEN = "hf_localhub_test_token"
REPO = "nanoflux/medqa"

README = """---
license: apache-2.0
tags:
- nanoflux
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---
# medqa

Built by NanoFlux.
"""


@pytest.fixture
def clients_cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-home"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clients_cache: Path) -> Iterator[FaultyHub]:
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    previous_factory = _http._GLOBAL_CLIENT_FACTORY  # the offline-enforcing default, normally
    with FaultyHub(tmp_path / "hub-root", token=TOKEN, user="alice", orgs=["nanoflux"]) as server:
        point_clients_at(monkeypatch, server.url, clients_cache)
        try:
            yield server
        finally:
            set_client_factory(previous_factory)  # also closes the loopback-allowing client


@pytest.fixture
def api(hub: LocalHub) -> HfApi:
    return HfApi(endpoint=hub.url, token=TOKEN)


def parquet_bytes(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


V1_ROWS = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
V2_ROWS = V1_ROWS + [{"question": "q3", "answer": "a3"}]


def publish(api: HfApi, rows: list[dict], tag: str) -> str:
    """Commit the README and one parquet shard, then tag the commit; returns the commit sha."""
    info = api.create_commit(
        REPO,
        repo_type="dataset",
        operations=[
            CommitOperationAdd("README.md", README.encode()),
            CommitOperationAdd("data/train-00000-of-00001.parquet", parquet_bytes(rows)),
        ],
        commit_message=f"Publish {tag}",
    )
    api.create_tag(REPO, repo_type="dataset", tag=tag, revision=info.oid)
    return info.oid


@pytest.fixture
def versions(api: HfApi) -> dict[str, str]:
    api.create_repo(REPO, repo_type="dataset")
    return {"v1": publish(api, V1_ROWS, "v1"), "v2": publish(api, V2_ROWS, "v2")}


# -- auth and repos -------------------------------------------------------------------------------------------


def test_whoami_accepts_the_configured_token_and_rejects_others(hub: LocalHub) -> None:
    me = HfApi(endpoint=hub.url, token=TOKEN).whoami()
    assert me["name"] == "alice"
    assert [o["name"] for o in me["orgs"]] == ["nanoflux"]
    assert me["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token="hf_wrong").whoami()
    assert err.value.response.status_code == 401


def test_writes_need_the_token_but_public_reads_do_not(hub: FaultyHub, api: HfApi) -> None:
    anonymous = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.create_repo(REPO, repo_type="dataset")
    assert err.value.response.status_code == 401
    api.create_repo(REPO, repo_type="dataset")
    with pytest.raises(HfHubHTTPError):
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, repo_type="dataset")
    assert anonymous.dataset_info(REPO).id == REPO
    assert [f.rfilename for f in anonymous.dataset_info(REPO).siblings] == [".gitattributes"]


def test_create_repo_conflicts_unless_exist_ok(api: HfApi) -> None:
    url = api.create_repo(REPO, repo_type="dataset")
    assert url.repo_id == REPO and url.repo_type == "dataset"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO, repo_type="dataset")
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, repo_type="dataset", exist_ok=True).repo_id == REPO


def test_private_repo_is_hidden_from_anonymous_readers(hub: FaultyHub, api: HfApi) -> None:
    api.create_repo("alice/secret", repo_type="dataset", private=True)
    assert api.dataset_info("alice/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).dataset_info("alice/secret")
    api.update_repo_settings("alice/secret", repo_type="dataset", private=False)
    assert HfApi(endpoint=hub.url, token=False).dataset_info("alice/secret").private is False


def test_model_and_space_repos_use_their_own_url_prefixes(api: HfApi, hub: LocalHub) -> None:
    api.create_repo("alice/lora", repo_type="model")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="adapter_config.json", repo_id="alice/lora")
    api.create_repo("alice/demo", repo_type="space", space_sdk="gradio")
    api.upload_file(path_or_fileobj=b"print(1)", path_in_repo="app.py", repo_id="alice/demo", repo_type="space")
    assert Path(api.hf_hub_download("alice/lora", "adapter_config.json")).read_bytes() == b"{}"
    assert Path(api.hf_hub_download("alice/demo", "app.py", repo_type="space")).read_bytes() == b"print(1)"
    assert ("HEAD", "/alice/lora/resolve/main/adapter_config.json") in hub.request_log
    assert ("HEAD", "/spaces/alice/demo/resolve/main/app.py") in hub.request_log
    assert (hub.root / "models" / "alice" / "lora" / "refs.json").is_file()
    api.delete_repo("alice/lora")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/lora")


# -- versions -------------------------------------------------------------------------------------------------


def test_tags_pin_versions_in_refs_repo_info_and_downloads(api: HfApi, versions: dict[str, str]) -> None:
    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert {t.name: t.target_commit for t in refs.tags} == versions
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", versions["v2"])]
    assert refs.converts == []

    for tag, sha in versions.items():
        info = api.dataset_info(REPO, revision=tag)
        assert info.sha == sha
        assert info.card_data["configs"][0]["data_files"][0]["path"] == "data/train-*.parquet"
        assert "license:apache-2.0" in info.tags and "nanoflux" in info.tags
    shard = "data/train-00000-of-00001.parquet"
    v1_file = api.hf_hub_download(REPO, shard, repo_type="dataset", revision="v1")
    assert pq.read_table(v1_file).to_pylist() == V1_ROWS
    v2_file = api.hf_hub_download(REPO, shard, repo_type="dataset", revision="v2")
    assert pq.read_table(v2_file).to_pylist() == V2_ROWS
    assert versions["v1"] in v1_file and versions["v2"] in v2_file  # cached under the tagged commit


def test_tree_paths_info_and_commits_describe_each_version(api: HfApi, versions: dict[str, str]) -> None:
    top = api.list_repo_tree(REPO, repo_type="dataset", revision="v1")
    assert [(e.path, type(e).__name__) for e in top] == [
        ("data", "RepoFolder"),
        (".gitattributes", "RepoFile"),
        ("README.md", "RepoFile"),
    ]
    every = list(api.list_repo_tree(REPO, repo_type="dataset", revision="v1", recursive=True, expand=True))
    shard = next(e for e in every if e.path == "data/train-00000-of-00001.parquet")
    assert shard.size == len(parquet_bytes(V1_ROWS)) and shard.lfs.sha256  # *.parquet is LFS, as on the Hub
    assert shard.last_commit.oid == versions["v1"] and shard.last_commit.title == "Publish v1"
    gitattributes = next(e for e in every if e.path == ".gitattributes")
    assert gitattributes.last_commit.title == "initial commit"

    files = api.list_repo_files(REPO, repo_type="dataset", revision="v2")
    assert files == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet"]
    infos = api.get_paths_info(REPO, ["README.md", "data", "missing.txt"], repo_type="dataset", revision="v2")
    assert [(i.path, type(i).__name__) for i in infos] == [("README.md", "RepoFile"), ("data", "RepoFolder")]

    commits = api.list_repo_commits(REPO, repo_type="dataset", revision="v2")
    assert [c.title for c in commits] == ["Publish v2", "Publish v1", "initial commit"]
    assert commits[0].commit_id == versions["v2"] and commits[0].authors == ["alice"]
    assert [c.title for c in api.list_repo_commits(REPO, repo_type="dataset", revision="v1")][0] == "Publish v1"


def test_unchanged_files_are_skipped_and_deletions_apply(api: HfApi, versions: dict[str, str]) -> None:
    info = api.create_commit(
        REPO,
        repo_type="dataset",
        operations=[
            CommitOperationAdd("README.md", README.encode()),  # identical: the client drops it (preupload oid)
            CommitOperationDelete("data/"),
        ],
        commit_message="Drop data",
    )
    assert api.list_repo_files(REPO, repo_type="dataset", revision=info.oid) == [".gitattributes", "README.md"]
    assert api.list_repo_files(REPO, repo_type="dataset", revision="v2")[-1].startswith("data/")


def test_creating_an_existing_tag_is_a_conflict(api: HfApi, versions: dict[str, str]) -> None:
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(REPO, repo_type="dataset", tag="v1", revision=versions["v2"])
    assert err.value.response.status_code == 409
    assert api.dataset_info(REPO, revision="v1").sha == versions["v1"]  # unchanged
    api.delete_tag(REPO, repo_type="dataset", tag="v1")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="v1")
    api.create_tag(REPO, repo_type="dataset", tag="v1", revision="v2")
    assert api.dataset_info(REPO, revision="v1").sha == versions["v2"]


def test_missing_repo_revision_and_file_raise_the_hub_errors(api: HfApi, versions: dict[str, str]) -> None:
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("nanoflux/nope")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="refs/convert/parquet")
    with pytest.raises(RevisionNotFoundError):
        api.hf_hub_download(REPO, "README.md", repo_type="dataset", revision="v9")
    with pytest.raises(EntryNotFoundError):
        api.hf_hub_download(REPO, "nope.txt", repo_type="dataset", revision="v1")
    assert api.file_exists(REPO, "README.md", repo_type="dataset", revision="v1")
    assert not api.file_exists(REPO, "nope.txt", repo_type="dataset", revision="v1")


def test_branches_can_be_created_committed_to_and_deleted(api: HfApi, versions: dict[str, str]) -> None:
    api.create_branch(REPO, repo_type="dataset", branch="draft", revision="v1")
    api.upload_file(
        path_or_fileobj=b"wip", path_in_repo="notes.txt", repo_id=REPO, repo_type="dataset", revision="draft"
    )
    assert "notes.txt" in api.list_repo_files(REPO, repo_type="dataset", revision="draft")
    assert "notes.txt" not in api.list_repo_files(REPO, repo_type="dataset")
    api.delete_branch(REPO, repo_type="dataset", branch="draft")
    assert [b.name for b in api.list_repo_refs(REPO, repo_type="dataset").branches] == ["main"]


# -- failures -------------------------------------------------------------------------------------------------


def test_a_failed_commit_leaves_refs_unchanged(hub: FaultyHub, api: HfApi, versions: dict[str, str]) -> None:
    before = (hub.root / "datasets" / REPO / "refs.json").read_text()
    hub.fail_next("POST", r"/api/datasets/.*/commit/", status=500, times=1)
    with pytest.raises(HfHubHTTPError) as err:
        publish(api, V2_ROWS + [{"question": "q4", "answer": "a4"}], "v3")
    assert err.value.response.status_code == 500
    assert (hub.root / "datasets" / REPO / "refs.json").read_text() == before
    assert [t.name for t in api.list_repo_refs(REPO, repo_type="dataset").tags] == ["v1", "v2"]
    assert ("POST", f"/api/datasets/{REPO}/commit/main") in hub.request_log
    v3 = publish(api, V2_ROWS + [{"question": "q4", "answer": "a4"}], "v3")  # the fault is used up
    assert api.dataset_info(REPO, revision="v3").sha == v3


def test_a_lost_commit_response_still_lands_the_commit(hub: FaultyHub, api: HfApi, versions: dict[str, str]) -> None:
    hub.fail_next("POST", r"/commit/", status=502, after=True)
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, repo_type="dataset")
    assert "x.txt" in api.list_repo_files(REPO, repo_type="dataset")


def test_a_crash_before_the_ref_update_leaves_no_visible_change(
    hub: LocalHub, api: HfApi, versions: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: RepoStore, d: Path, refs: dict) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patched, pytest.raises(HfHubHTTPError) as err:
        patched.setattr(RepoStore, "_write_refs", crash)
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, repo_type="dataset")
    assert err.value.response.status_code == 500
    assert api.dataset_info(REPO).sha == versions["v2"]
    assert "x.txt" not in api.list_repo_files(REPO, repo_type="dataset")


def test_a_stale_parent_commit_is_rejected(api: HfApi, versions: dict[str, str]) -> None:
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(
            REPO,
            repo_type="dataset",
            operations=[CommitOperationAdd("x.txt", b"x")],
            commit_message="stale",
            parent_commit=versions["v1"],
        )
    assert err.value.response.status_code == 412
    assert api.dataset_info(REPO).sha == versions["v2"]


# -- datasets, HfFileSystem, persistence ----------------------------------------------------------------------


def test_load_dataset_returns_the_rows_of_each_version(versions: dict[str, str], clients_cache: Path) -> None:
    import datasets

    v1 = datasets.load_dataset(REPO, revision="v1", split="train", cache_dir=str(clients_cache / "ds"))
    v2 = datasets.load_dataset(REPO, revision="v2", split="train", cache_dir=str(clients_cache / "ds"))
    assert v1.to_list() == V1_ROWS
    assert v2.to_list() == V2_ROWS


def test_hffs_reads_byte_ranges_of_a_tagged_file(hub: LocalHub, versions: dict[str, str]) -> None:
    fs = HfFileSystem(endpoint=hub.url, token=TOKEN)
    assert fs.ls(f"datasets/{REPO}@v1/data", detail=False) == [f"datasets/{REPO}@v1/data/train-00000-of-00001.parquet"]
    with fs.open(f"datasets/{REPO}@v1/README.md", "rb", block_size=8) as f:
        f.seek(4)
        assert f.read(7) == README.encode()[4:11]
    assert fs.read_text(f"datasets/{REPO}@v2/README.md") == README


def test_versions_persist_across_a_server_restart(
    hub: LocalHub, versions: dict[str, str], monkeypatch: pytest.MonkeyPatch, clients_cache: Path
) -> None:
    import datasets

    hub.close()
    with LocalHub(hub.root, token=TOKEN) as again:
        point_clients_at(monkeypatch, again.url, clients_cache / "restarted")
        api = HfApi(endpoint=again.url, token=TOKEN)
        assert {t.name: t.target_commit for t in api.list_repo_refs(REPO, repo_type="dataset").tags} == versions
        assert datasets.load_dataset(REPO, revision="v1", split="train").to_list() == V1_ROWS
        assert json.loads((again.root / "datasets" / REPO / "refs.json").read_text())["tags"] == versions


def test_checkout_writes_a_version_to_a_plain_folder(hub: LocalHub, versions: dict[str, str], tmp_path: Path) -> None:
    out = hub.store.checkout("dataset", REPO, "v1", tmp_path / "v1")
    assert pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist() == V1_ROWS
    assert (out / "README.md").read_text() == README


def test_dataset_push_to_hub_uploads_parquet_through_lfs_and_loads_back(
    hub: LocalHub, api: HfApi, clients_cache: Path
) -> None:
    import datasets

    datasets.Dataset.from_list(V1_ROWS).push_to_hub(REPO, token=TOKEN)
    api.create_tag(REPO, repo_type="dataset", tag="v1")
    datasets.Dataset.from_list(V2_ROWS).push_to_hub(REPO, token=TOKEN, commit_message="v2")
    assert any(path.endswith(".git/info/lfs/objects/batch") for _, path in hub.request_log)
    assert any(method == "PUT" and "/_localhub/lfs/" in path for method, path in hub.request_log)
    loaded = datasets.load_dataset(REPO, revision="v1", split="train", cache_dir=str(clients_cache / "ds"))
    assert loaded.to_list() == V1_ROWS
    assert [c.title for c in api.list_repo_commits(REPO, repo_type="dataset")][:2] == ["v2", "Upload dataset"]


def test_concurrent_commits_are_serialized_and_none_is_lost(api: HfApi) -> None:
    from concurrent.futures import ThreadPoolExecutor

    api.create_repo(REPO, repo_type="dataset")

    def upload(i: int) -> str:
        return api.upload_file(
            path_or_fileobj=f"{i}".encode(),
            path_in_repo=f"notes/{i}.txt",
            repo_id=REPO,
            repo_type="dataset",
            commit_message=f"note {i}",
        ).oid

    with ThreadPoolExecutor(8) as pool:
        shas = set(pool.map(upload, range(8)))
    assert len(shas) == 8
    assert len(api.list_repo_files(REPO, repo_type="dataset")) == 1 + 8
    assert len(api.list_repo_commits(REPO, repo_type="dataset")) == 1 + 8  # a linear history


def test_tree_listing_follows_pagination(hub: FaultyHub, api: HfApi) -> None:
    api.create_repo(REPO, repo_type="dataset")
    api.create_commit(
        REPO,
        repo_type="dataset",
        commit_message="many",
        operations=[CommitOperationAdd(f"rows/{i:03d}.txt", b"x") for i in range(120)],
    )
    listed = list(api.list_repo_tree(REPO, "rows", repo_type="dataset", expand=True))  # 50 per expanded page
    assert [e.path for e in listed] == [f"rows/{i:03d}.txt" for i in range(120)]
    assert sum(1 for _, path in hub.request_log if path.endswith("/tree/main/rows")) == 3


def test_other_hosts_stay_unreachable_while_pointed_at_the_local_hub(hub: LocalHub) -> None:
    with pytest.raises(OfflineModeIsEnabled):
        HfApi(endpoint="https://huggingface.co", token=False).dataset_info(REPO)


def test_clients_are_offline_again_outside_the_hub_fixture(tmp_path: Path) -> None:
    with LocalHub(tmp_path) as server, pytest.raises(OfflineModeIsEnabled):
        HfApi(endpoint=server.url, token=False).dataset_info(REPO)


def test_cli_serves_a_folder_until_interrupted(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "localhub", "--root", str(tmp_path), "--port", "0"],
        cwd=root,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stderr.readline() for _ in range(2)]
        url = re.search(r"http://127\.0\.0\.1:\d+", lines[0]).group(0)
        assert f"HF_ENDPOINT={url}" in lines[1]
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(f"{url}/api/whoami-v2", timeout=5) as response:
            assert json.load(response)["name"] == "localhub"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
