import json

import pytest

from nanoflux.journal import Journal, damaged_path, scan, seal_path


def _lines(path):
    return path.read_bytes().splitlines()


def test_records_survive_reopen_and_later_records_win(tmp_path):
    path = tmp_path / "calls.jsonl"
    journal = Journal(path)
    journal.put({"key": "a", "fingerprint": "f", "text": "1"})
    journal.put({"key": "a", "fingerprint": "f", "text": "2"})
    journal.put({"key": "b", "fingerprint": "f", "text": "3 — ünïcode"})
    journal.close()
    reopened = Journal(path)
    assert len(reopened) == 2 and reopened.get("a")["text"] == "2" and "b" in reopened and reopened.lost == 0
    assert reopened.get("b") == {"key": "b", "fingerprint": "f", "text": "3 — ünïcode"}  # no `_seq`/`_sum` leak out
    assert path.read_bytes().isascii()  # written ASCII-safe: no multi-byte character can be torn
    assert json.loads(seal_path(path).read_text())["records"] == 3
    reopened.close()


def test_a_torn_last_line_from_a_kill_is_set_aside_and_appends_start_on_a_new_line(tmp_path):
    path = tmp_path / "calls.jsonl"
    journal = Journal(path)
    journal.put({"key": "a", "fingerprint": "f", "text": "done"})
    journal._file.write(b'{"_seq":1,"fingerprint":"f","key":"b","te')  # killed mid-write: no close, no seal
    journal._file.flush()
    reopened = Journal(path)
    assert list(reopened.records) == ["a"] and reopened.lost == 1
    assert b'"key":"b","te' in damaged_path(path).read_bytes()
    reopened.put({"key": "c", "fingerprint": "f", "text": "new"})
    reopened.close()
    assert [json.loads(line)["key"] for line in _lines(path)] == ["a", "c"]
    again = Journal(path)
    assert list(again.records) == ["a", "c"] and again.lost == 0 and not again.scan.damaged


def test_reopening_a_clean_journal_leaves_it_byte_for_byte_unchanged(tmp_path):
    path = tmp_path / "calls.jsonl"
    journal = Journal(path)
    journal.put({"key": "a", "fingerprint": "f", "text": "1"})
    journal.close()
    before, seal = path.read_bytes(), seal_path(path).read_bytes()
    Journal(path).close()
    assert path.read_bytes() == before and seal_path(path).read_bytes() == seal


@pytest.mark.parametrize(
    "junk, reason",
    [
        (b"[1, 2]", "a JSON list"),
        (b"42", "a JSON int"),
        (b"{}", "without a string `key`"),
        (b'{"fingerprint": "f"}', "without a string `key`"),
        (b'{"key": "x", "_seq": 1, "_sum": "0000000000000000"}', "checksum mismatch"),
        (b'{"key": "x", "text": "no checksum"}', "without `_sum` in a checksummed journal"),
        ('{"key": "x", "text": "caf\u00e9"}'.encode()[:-3], "not valid UTF-8"),
        (b"\xff\xfe garbage", "not valid UTF-8"),
        (b"   ", "a blank line"),
    ],
)
def test_a_line_that_is_not_an_intact_record_is_skipped_counted_and_set_aside(tmp_path, junk, reason):
    path = tmp_path / "calls.jsonl"
    journal = Journal(path)
    for i in range(3):
        journal.put({"key": f"k{i}", "fingerprint": "f", "text": str(i)})
    journal.close()
    lines = _lines(path)
    path.write_bytes(b"\n".join([lines[0], junk, lines[2]]) + b"\n")  # record 1 replaced by junk
    found = scan(path)
    assert found.lost == 1 and [d.line for d in found.damaged] == [2] and reason in found.damaged[0].reason
    reopened = Journal(path)
    assert sorted(reopened.records) == ["k0", "k2"] and reopened.lost == 1
    reopened.close()
    assert damaged_path(path).read_bytes().endswith(junk.rstrip(b"\n") + b"\n")
    assert scan(path).lost == 0 and not scan(path).needs_repair  # reported once: the journal is clean again


def test_an_altered_record_that_is_still_valid_json_is_never_replayed(tmp_path):
    path = tmp_path / "calls.jsonl"
    journal = Journal(path)
    journal.put({"key": "a", "fingerprint": "f", "text": "the answer is B"})
    journal.put({"key": "b", "fingerprint": "f", "text": "x"})
    journal.close()
    path.write_bytes(path.read_bytes().replace(b"answer is B", b"answer is C"))
    found = scan(path)
    assert found.lost == 1 and "altered" in found.damaged[0].reason and found.damaged[0].key == "a"
    assert list(Journal(path).records) == ["b"]


def test_records_cut_off_the_end_are_counted_from_the_seal(tmp_path):
    path = tmp_path / "calls.jsonl"
    journal = Journal(path)
    for i in range(26):
        journal.put({"key": f"k{i}", "fingerprint": "f", "text": "x" * i})
    journal.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    found = scan(path)
    intact = len(found.lines)
    assert found.lost == 26 - intact and "lost" in found.summary() and str(26 - intact) in found.summary()


def test_an_older_journal_without_checksums_is_accepted_once_and_rewritten(tmp_path, caplog):
    path = tmp_path / "calls.jsonl"
    old = [
        {"key": "a", "fingerprint": "f", "text": "é"},
        {"key": "b", "text": "no fingerprint"},
        {"key": "c", "fingerprint": "f", "text": "2"},
    ]
    torn = json.dumps({"key": "d", "fingerprint": "f", "text": "日本"}, ensure_ascii=False).encode()[
        :-5
    ]  # a torn multi-byte character
    path.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in old) + torn)
    journal = Journal(path)
    assert sorted(journal.records) == ["a", "c"] and journal.lost == 2 and journal.get("a")["text"] == "é"
    assert "older NanoFlux without checksums" in caplog.text
    journal.close()
    upgraded = scan(path)
    assert not upgraded.legacy and not upgraded.needs_repair and sorted(upgraded.records) == ["a", "c"]


def test_put_refuses_a_record_it_could_not_replay(tmp_path):
    journal = Journal(tmp_path / "calls.jsonl")
    with pytest.raises(ValueError, match="string `key`"):
        journal.put({"text": "no key"})
    with pytest.raises(ValueError, match="_seq"):
        journal.put({"key": "a", "_seq": 3})
    journal.close()
