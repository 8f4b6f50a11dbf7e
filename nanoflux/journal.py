"""Durable build state: append-only, checksummed JSON Lines journals in the output dir.

Every finished role call and tool run is appended (and fsynced) under a deterministic key as it completes, so after
a crash or `kill -9` a re-run replays the build from the journal: finished calls are answered from disk, only missing
or failed ones go out again, and the rows come out exactly as in an uninterrupted run. The build writes through
`aput`, which runs the write and its fsync in the journal's own threads, so the event loop keeps sending requests
meanwhile; records written at the same moment share one fsync (group commit).

Each line is one record in canonical JSON (ASCII, sorted keys, no spaces) with two fields of its own: `_seq`, its
number in the journal (0, 1, 2, ...), and `_sum`, the first 16 hex digits of the sha256 of the line without `_sum`.
A line that is not exactly such a record, whatever its bytes (torn by a kill, cut, altered, a list, `{}`, invalid
UTF-8), is skipped and never replayed. `close` writes a seal (`calls.seal.json`: how many records the journal held),
so records cut off the end are counted too: the number of lost records (calls to send again) is exact up to the
last clean close; a tail lost after a kill counts as one. On opening, a damaged journal is repaired: the damaged
lines are set aside in `<journal>.damaged` and the intact records kept (renumbered), so the loss is reported once.
A journal written before checksums (no `_sum` on any line, no seal) is accepted once, as it is, and rewritten with
checksums.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nanoflux.runfolder import write_atomic

logger = logging.getLogger(__name__)

SEQ, SUM = "_seq", "_sum"
# Fields an older journal's (unchecksummed) record must have besides `key` to be replayed; a checksummed record is
# exactly what `put` was given, so it is not checked again.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {"calls.jsonl": ("fingerprint",), "tools.jsonl": ("input",)}


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def checksum(body: str) -> str:
    """The short checksum of a record's canonical JSON (without `_sum`)."""
    return hashlib.sha256(body.encode("ascii")).hexdigest()[:16]


def encode(record: dict[str, Any], seq: int) -> bytes:
    """The journal line of `record` as record number `seq`."""
    data = {**record, SEQ: seq}
    data[SUM] = checksum(_dump(data))
    return (_dump(data) + "\n").encode("ascii")


def seal_path(path: Path) -> Path:
    """`calls.jsonl` -> `calls.seal.json`: how many records the journal held when it was last closed."""
    return path.with_name(f"{path.name.split('.')[0]}.seal.json")


def damaged_path(path: Path) -> Path:
    """Where repairs set damaged lines aside (raw bytes, for inspection)."""
    return path.with_name(path.name + ".damaged")


@dataclass
class Damage:
    """One journal line that is not an intact record."""

    line: int  # 1-based
    offset: int  # byte offset of the line in the file
    reason: str
    raw: bytes = field(repr=False)
    key: str | None = None  # the key it names, when that is still legible (e.g. an altered record)

    def describe(self) -> str:
        return f"line {self.line} (byte {self.offset}): {self.reason}" + (f" [key {self.key}]" if self.key else "")


@dataclass
class Scan:
    """What reading a journal found: its intact records and everything else."""

    path: Path
    lines: list[tuple[int, bytes, dict[str, Any]]]  # (offset, raw line, record) of each intact line, in file order
    seqs: list[int]  # their `_seq` (empty for an older journal)
    damaged: list[Damage]
    lost: int  # records lost: the calls a resumed build sends again
    legacy: bool  # written before checksums: records accepted unchecked
    sealed: int | None  # records the seal says the journal held
    seal_problem: str | None = None
    size: int = 0
    ends_with_newline: bool = True

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        """Intact records by key (a later record with the same key wins)."""
        return {record["key"]: record for _, _, record in self.lines}

    @property
    def needs_repair(self) -> bool:
        return bool(self.damaged or self.lost or self.legacy or self.seal_problem)

    def summary(self, details: bool = True) -> str:
        """One line: what is damaged (with the first lines' reasons when `details`), how many records are lost."""
        name = self.path.name
        if self.legacy:
            text = (
                f"{name}: written by an older NanoFlux without checksums: {len(self.lines)} record(s) accepted once as"
                " they are (they cannot be verified)"
            )
        else:
            text = f"{name}: {len(self.lines)} intact record(s)"
        if self.damaged and not details:
            text += f", {len(self.damaged)} damaged line(s)"
        elif self.damaged:
            text += (
                f", {len(self.damaged)} damaged line(s)"
                f" ({'; '.join(d.describe() for d in self.damaged[:5])}{'; ...' if len(self.damaged) > 5 else ''})"
            )
        if self.lost:
            text += f"; {self.lost} record(s) lost: a resumed build sends those calls again"
        if self.seal_problem:
            text += f"; {self.seal_problem}"
        return text


def _decode(raw: bytes, required: tuple[str, ...]) -> tuple[dict[str, Any] | None, str | None, str | None, bool]:
    """(record, reason it is damaged, key if legible, legacy): a line of the journal, checked."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 (byte {err.start} of the line)", None, False
    if not text.strip():
        return None, "a blank line", None, False
    try:
        data = json.loads(text)
    except ValueError as err:
        torn = "" if raw.endswith(b"\n") else "torn (no newline at its end): "
        return None, f"{torn}not JSON ({err.msg}, column {err.colno})", None, False
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__} where a record (object) belongs", None, False
    key = data.get("key")
    if not isinstance(key, str):
        return None, "a record without a string `key`", None, False
    key_shown = key[:120]
    missing = [name for name in required if name not in data]
    if SUM not in data and SEQ not in data:  # an older journal's record, or one whose checksum was lost
        if missing:
            return None, f"a record without `{missing[0]}`", key_shown, True
        return data, None, key_shown, True
    claimed, seq = data.pop(SUM, None), data.get(SEQ)
    if not isinstance(claimed, str) or type(seq) is not int:
        return None, f"a record without a valid `{SUM}` and `{SEQ}`", key_shown, False
    canonical = _dump(data)
    if checksum(canonical) != claimed:
        return None, "checksum mismatch: the record was altered", key_shown, False
    if body != _dump({**data, SUM: claimed}).encode("ascii"):
        return None, "not in the journal's exact form: the line was altered", key_shown, False
    return data, None, key_shown, False


def _read_seal(path: Path) -> tuple[int | None, str | None]:
    target = seal_path(path)
    if not target.exists():
        return None, None
    try:
        seal = json.loads(target.read_bytes())
        records = seal["records"]
        if type(records) is not int or records < 0:
            raise ValueError(f"records = {records!r}")
        return records, None
    except (ValueError, KeyError, TypeError) as err:
        return None, f"its seal {target.name} is damaged ({err}): records lost off the end cannot be counted"


def scan(path: str | Path, required: tuple[str, ...] | None = None) -> Scan:
    """Read a journal without changing it: intact records, damaged lines, records lost."""
    path = Path(path)
    required = REQUIRED_FIELDS.get(path.name, ()) if required is None else required
    sealed, seal_problem = _read_seal(path)
    decoded: list[tuple[int, int, bytes, dict[str, Any] | None, str | None, str | None, bool]] = []
    offset = size = 0
    last = b"\n"
    if path.exists():
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                decoded.append((number, offset, raw, *_decode(raw, required)))
                offset += len(raw)
                last = raw
        size = offset
    checked = sealed is not None or any(record is not None and not legacy for *_, record, _, _, legacy in decoded)
    lines: list[tuple[int, bytes, dict[str, Any]]] = []
    damaged: list[Damage] = []
    for number, start, raw, record, reason, key, legacy in decoded:
        if legacy and checked:
            record, reason = None, f"a record without `{SUM}` in a checksummed journal"
        if record is None:
            damaged.append(Damage(number, start, reason or "damaged", raw, key))
        else:
            lines.append((start, raw, record))
    is_legacy = bool(lines) and not checked
    seqs = [record.pop(SEQ) for _, _, record in lines if SEQ in record]  # callers see records as they were put
    if not checked:  # no checksummed line and no seal: each damaged line is taken for one record
        lost = len(damaged)
    else:
        expected = max(sealed or 0, max(seqs) + 1 if seqs else 0)
        lost = expected - len(set(seqs))
        last_ok = lines[-1][0] if lines else -1
        beyond = expected - (max(seqs) + 1 if seqs else 0)  # records the seal knows of after the last intact one
        if beyond == 0 and any(d.offset > last_ok for d in damaged):
            lost += 1  # a line torn after the last close (a kill mid-write): at least one record
    return Scan(path, lines, seqs, damaged, lost, is_legacy, sealed, seal_problem, size, last.endswith(b"\n"))


def _set_aside(found: Scan) -> None:
    """Append the damaged lines, raw, to `<journal>.damaged` (atomically), under a header saying when and why."""
    if not found.damaged:
        return
    target = damaged_path(found.path)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    header = (
        f"# {when} nanoflux: {len(found.damaged)} damaged line(s) set aside from {found.path.name} ({found.lost}"
        " record(s) lost)\n"
    )
    body = b"".join(
        (f"# {d.describe()}\n".encode("ascii", "backslashreplace") + d.raw.rstrip(b"\n") + b"\n")
        for d in found.damaged
    )
    write_atomic(target, (target.read_bytes() if target.exists() else b"") + header.encode() + body)


def write_seal(path: Path, records: int) -> None:
    """Record (atomically) that the journal at `path` holds `records` records."""
    size = path.stat().st_size if path.exists() else 0
    seal = {
        "journal": path.name,
        "records": records,
        "bytes": size,
        "sealed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_atomic(seal_path(path), (json.dumps(seal, indent=2) + "\n").encode())


def repair(found: Scan) -> int:
    """Rewrite a damaged journal keeping every intact record (the damaged lines go to `<journal>.damaged`); returns
    how many records it now holds. A tail-only loss is cut off in place; anything else is rewritten atomically."""
    path = found.path
    _set_aside(found)
    tail_only = (
        not found.legacy
        and found.seqs == list(range(len(found.lines)))
        and all(d.offset > (found.lines[-1][0] if found.lines else -1) for d in found.damaged)
    )
    if tail_only:
        end = found.lines[-1][0] + len(found.lines[-1][1]) if found.lines else 0
        with path.open("rb+") as f:
            f.truncate(end)
            if end and not found.lines[-1][1].endswith(b"\n"):
                f.seek(end)
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
    else:
        write_atomic(path, b"".join(encode(record, seq) for seq, (_, _, record) in enumerate(found.lines)))
    write_seal(path, len(found.lines))
    return len(found.lines)


class Journal:
    """An append-only checksummed JSONL file indexed by each record's `key` (a later record with the same key wins).
    Opening it repairs damage (see the module doc); `scan` holds what was found, `lost` how many records were lost."""

    def __init__(self, path: str | Path, *, required: tuple[str, ...] | None = None):
        self.path = Path(path)
        self.scan = scan(self.path, required)
        self.records: dict[str, dict[str, Any]] = self.scan.records
        self.lost = self.scan.lost
        self._next_seq = len(self.scan.lines)
        if self.scan.needs_repair:
            logger.warning("%s", self.scan.summary())
            self._next_seq = repair(self.scan)
            if self.scan.damaged:
                logger.warning("%s: the damaged line(s) were set aside in %s", self.path, damaged_path(self.path).name)
            if self.scan.legacy:
                logger.warning("%s: rewritten with checksums", self.path)
        elif self.scan.lines:
            self._next_seq = self.scan.seqs[-1] + 1
        self._sealed = self.scan.sealed == self._next_seq or self.scan.needs_repair
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0  # lines flushed to the file so far
        self._synced = 0  # of those, how many an fsync has made durable
        self._executor: ThreadPoolExecutor | None = None
        self._file = self.path.open("ab")
        if not self.scan.ends_with_newline and not self.scan.needs_repair:
            self._file.write(b"\n")  # the last record's newline was cut: the next append starts on a line of its own
            self._file.flush()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def put(self, record: dict[str, Any]) -> None:
        """Append `record` (which has a string `key`) and make it durable before returning. Thread-safe: when another
        thread's fsync started after this line was flushed, it already made the line durable and none is repeated."""
        if not isinstance(record.get("key"), str) or SEQ in record or SUM in record:
            raise ValueError(
                f"{self.path}: a record needs a string `key` and no `{SEQ}`/`{SUM}` (got keys {sorted(record)})"
            )
        with self._lock:
            line = encode(record, self._next_seq)
            self._file.write(line)
            self._file.flush()
            self._next_seq += 1
            self._written += 1
            self._sealed = False
            ticket = self._written
        with self._sync_lock:
            if self._synced < ticket:
                with self._lock:
                    covered = self._written  # every line flushed so far goes to disk with this fsync
                os.fsync(self._file.fileno())
                self._synced = covered
        with self._lock:
            self.records[record["key"]] = record

    async def aput(self, record: dict[str, Any]) -> None:
        """`put` without blocking the event loop: the write and the fsync run in the journal's threads."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"journal-{self.path.stem}")
        await asyncio.get_running_loop().run_in_executor(self._executor, self.put, record)

    def close(self) -> None:
        """Finish pending writes and seal the journal (its record count, for counting a later loss exactly)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._file.closed:
            return
        self._file.close()
        if not self._sealed:
            write_seal(self.path, self._next_seq)
            self._sealed = True
