"""Journal fuzz: truncation at every offset, seeded byte flips, junk lines. Loading never crashes, the number of
lost records is exact, and no altered record is ever replayed."""

from __future__ import annotations

import json
import random

import pytest

from nanoflux.journal import Journal, scan

RECORDS = [
    {
        "key": f"r00-a{i:04d}/attack/try0",
        "fingerprint": f"{i:016x}",
        "text": "Final answer: é — " + "x" * (i % 5),
        "retries": i % 2,
    }
    for i in range(12)
]


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    """Durability is not under test here, and thousands of fsyncs make the fuzz slow."""
    import nanoflux.journal

    monkeypatch.setattr(nanoflux.journal.os, "fsync", lambda fd: None)


@pytest.fixture
def journal_bytes(tmp_path) -> tuple[bytes, list[tuple[int, int]]]:
    """A cleanly closed journal of RECORDS and each record's byte span [start, end] (end: its newline)."""
    path = tmp_path / "source" / "calls.jsonl"
    path.parent.mkdir()
    journal = Journal(path)
    for record in RECORDS:
        journal.put(record)
    journal.close()
    data = path.read_bytes()
    spans, start = [], 0
    for line in data.splitlines(keepends=True):
        spans.append((start, start + len(line) - 1))
        start += len(line)
    return data, spans


def _load(tmp_path, name: str, data: bytes, seal: bytes) -> tuple[int, dict]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "calls.seal.json").write_bytes(seal)
    (folder / "calls.jsonl").write_bytes(data)
    found = scan(folder / "calls.jsonl")
    journal = Journal(folder / "calls.jsonl")  # repairs
    assert journal.lost == found.lost and journal.records == found.records
    journal.close()
    assert not scan(folder / "calls.jsonl").needs_repair, "a repaired journal reads clean"
    return found.lost, journal.records


def _intact(records: dict) -> None:
    """Every record loaded is one that was written, unaltered."""
    for key, record in records.items():
        assert record in RECORDS and record["key"] == key


def test_truncation_at_every_offset_loses_exactly_the_records_cut(tmp_path, journal_bytes):
    data, spans = journal_bytes
    seal = (tmp_path / "source" / "calls.seal.json").read_bytes()
    for offset in range(len(data) + 1):
        lost, records = _load(tmp_path, f"cut{offset}", data[:offset], seal)
        whole = sum(end - 1 < offset for _, end in spans)  # content complete (its newline may be cut)
        assert lost == len(RECORDS) - whole, offset
        assert sorted(records) == sorted(r["key"] for r in RECORDS[:whole]), offset
        _intact(records)


@pytest.mark.parametrize("seed", range(40))
def test_random_byte_flips_lose_exactly_the_records_they_touch(tmp_path, journal_bytes, seed):
    data, spans = journal_bytes
    seal = (tmp_path / "source" / "calls.seal.json").read_bytes()
    rng = random.Random(seed)
    damaged = bytearray(data)
    flips = {rng.randrange(len(data)) for _ in range(rng.randint(1, 4))}
    for position in flips:
        damaged[position] ^= rng.randint(1, 255)
    touched = {i for i, (start, end) in enumerate(spans) if any(start <= p <= end for p in flips)}
    touched |= {i + 1 for i, (_, end) in enumerate(spans[:-1]) if end in flips}  # a lost newline merges two lines
    lost, records = _load(tmp_path, f"flip{seed}", bytes(damaged), seal)
    assert lost == len(touched), (seed, sorted(flips))
    assert sorted(records) == sorted(RECORDS[i]["key"] for i in range(len(RECORDS)) if i not in touched)
    _intact(records)


@pytest.mark.parametrize(
    "junk",
    [
        b"[]",
        b"[1, 2]",
        b"3.5",
        b"null",
        b"{}",
        b'"key"',
        b'{"key": 7}',
        b'{"fingerprint": "f"}',
        b"\xc3",
        "é".encode()[:1] + b'"}',
        b"\x00" * 8,
    ],
)
def test_junk_in_place_of_a_record_is_one_lost_record(tmp_path, journal_bytes, junk):
    data, spans = journal_bytes
    seal = (tmp_path / "source" / "calls.seal.json").read_bytes()
    start, end = spans[5]
    lost, records = _load(tmp_path, "junk", data[:start] + junk + b"\n" + data[end + 1 :], seal)
    assert lost == 1 and RECORDS[5]["key"] not in records and len(records) == len(RECORDS) - 1
    _intact(records)


def test_an_altered_value_with_a_valid_shape_is_detected(tmp_path, journal_bytes):
    data, spans = journal_bytes
    seal = (tmp_path / "source" / "calls.seal.json").read_bytes()
    for i, (start, end) in enumerate(spans):
        record = json.loads(data[start : end + 1])
        record["retries"] += 1  # a plausible edit: valid JSON, right keys, checksum kept
        line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        lost, records = _load(tmp_path, f"edit{i}", data[:start] + line + b"\n" + data[end + 1 :], seal)
        assert lost == 1 and RECORDS[i]["key"] not in records
        _intact(records)
