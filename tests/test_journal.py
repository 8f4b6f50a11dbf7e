import json

from builder.journal import Journal


def test_records_survive_reopen_and_later_records_win(tmp_path):
    path = tmp_path / "calls.jsonl"
    journal = Journal(path)
    journal.put({"key": "a", "text": "1"})
    journal.put({"key": "a", "text": "2"})
    journal.put({"key": "b", "text": "3"})
    journal.close()
    reopened = Journal(path)
    assert len(reopened) == 2 and reopened.get("a")["text"] == "2" and "b" in reopened


def test_a_torn_last_line_from_a_kill_is_ignored_and_appends_start_on_a_new_line(tmp_path):
    path = tmp_path / "calls.jsonl"
    path.write_text(json.dumps({"key": "a", "text": "done"}) + "\n" + '{"key": "b", "te')
    journal = Journal(path)
    assert list(journal.records) == ["a"]
    journal.put({"key": "c", "text": "new"})
    journal.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()[::2]] == ["a", "c"]
    assert list(Journal(path).records) == ["a", "c"]


def test_reopening_a_clean_journal_leaves_it_byte_for_byte_unchanged(tmp_path):
    path = tmp_path / "calls.jsonl"
    journal = Journal(path)
    journal.put({"key": "a", "text": "1"})
    journal.close()
    before = path.read_bytes()
    Journal(path).close()
    assert path.read_bytes() == before
