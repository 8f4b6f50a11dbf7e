"""Small local reference corpora (JSONL passages, one per domain folder) searched with Okapi BM25: the Judge's
lookup tool."""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from builder.domains import CORPUS_FILE, packaged_domains

log = logging.getLogger(__name__)

K1 = 1.5
B = 0.75

_TOKEN = re.compile(r"[^\W_]+")
_STOPWORDS = frozenset(
    """a an and are as at be by can do does for from has have how i if in into is it its may of on or
    that the their there these this those to was what when where which who why will with""".split()
)


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens (NFKC-normalized, so 'm²' matches 'm2'), minus a small stopword list."""
    words = _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())
    return [w for w in words if w not in _STOPWORDS]


def read_json_lines(path: Path, *, field: str, fix: str) -> list[tuple[str, dict]]:
    """(`path:line`, object) for each non-blank line of a user-supplied UTF-8 JSONL file; ValueError naming the file
    (and line), the recipe `field` and the fix for an unreadable file, invalid JSON or a line that is not an object."""
    try:
        with path.open(encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}). {fix}, saved as UTF-8") from None
    except OSError as err:
        raise ValueError(
            f"{path}: cannot be read ({err.strerror or err}). Fix: point {field} at a readable file"
        ) from None
    objects = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: invalid JSON ({err.msg}). {fix}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}. {fix}")
        objects.append((where, obj))
    return objects


@dataclass(frozen=True)
class Passage:
    """One reference passage."""

    id: str
    title: str
    text: str


class Corpus:
    """An in-memory passage collection with a BM25 index over title + text."""

    def __init__(self, passages: Iterable[Passage]):
        self.passages: tuple[Passage, ...] = tuple(passages)
        if not self.passages:
            raise ValueError("a corpus needs at least one passage")
        seen: set[str] = set()
        for p in self.passages:
            if p.id in seen:
                raise ValueError(f"duplicate passage id {p.id!r}")
            seen.add(p.id)

        docs = [Counter(tokenize(f"{p.title} {p.text}")) for p in self.passages]
        self._doc_len = np.array([sum(d.values()) for d in docs], dtype=float)
        self._avgdl = float(self._doc_len.mean()) or 1.0
        # Postings: term -> (document indices, term frequencies).
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, doc in enumerate(docs):
            for term, tf in doc.items():
                idx, tfs = postings.setdefault(term, ([], []))
                idx.append(i)
                tfs.append(tf)
        n = len(docs)
        self._index = {
            term: (np.array(idx), np.array(tfs, dtype=float), self.idf(n, len(idx)))
            for term, (idx, tfs) in postings.items()
        }

    def __len__(self) -> int:
        return len(self.passages)

    @staticmethod
    def idf(n_docs: int, doc_freq: int) -> float:
        """BM25 inverse document frequency, ln(1 + (N - n + 0.5) / (n + 0.5)); never negative."""
        return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        """Read a JSONL file of {"id", "title", "text"} objects (blank lines skipped).

        Raises ValueError naming the file and line for malformed JSON, missing or empty fields,
        or duplicate ids.
        """
        path = Path(path)
        passages: list[Passage] = []
        seen: dict[str, int] = {}
        fix = 'Fix: write one JSON object a line: {"id": "...", "title": "...", "text": "..."}'
        if path.is_dir():
            raise ValueError(f"{path}: is a folder, not a JSONL file. Fix: point corpus at a .jsonl file")
        for where, obj in read_json_lines(path, field="corpus", fix=fix):
            for field in ("id", "title", "text"):
                value = obj.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{where}: field {field!r} is missing, empty or not a string. {fix}")
            if obj["id"] in seen:
                raise ValueError(
                    f"{where}: duplicate id {obj['id']!r} (first on line {seen[obj['id']]}). Fix: give every passage"
                    " its own id"
                )
            seen[obj["id"]] = where.rsplit(":", 1)[1]
            passages.append(Passage(obj["id"], obj["title"], obj["text"]))
        if not passages:
            raise ValueError(f"{path}: no passages (the file is empty). {fix}")
        log.debug("loaded %d passages from %s", len(passages), path)
        return cls(passages)

    def scores(self, query: str) -> np.ndarray:
        """Okapi BM25 score (k1=1.5, b=0.75) of every passage; each distinct query term counts once."""
        scores = np.zeros(len(self.passages))
        for term in set(tokenize(query)):
            entry = self._index.get(term)
            if entry is None:
                continue
            idx, tf, idf = entry
            norm = K1 * (1.0 - B + B * self._doc_len[idx] / self._avgdl)
            scores[idx] += idf * tf * (K1 + 1.0) / (tf + norm)
        return scores

    def search(self, query: str, k: int = 3) -> list[tuple[Passage, float]]:
        """The top-k passages with a positive score, best first; equal scores ordered by id."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        scores = self.scores(query)
        hits = [i for i in np.flatnonzero(scores > 0)]
        hits.sort(key=lambda i: (-round(float(scores[i]), 9), self.passages[i].id))
        return [(self.passages[i], float(scores[i])) for i in hits[:k]]


def packaged_corpus(domain: str) -> Path:
    """Path of the packaged corpus builder/domains/<domain>/corpus.jsonl."""
    available = packaged_domains()
    if domain not in available:
        raise ValueError(f"no packaged corpus for domain {domain!r}; available: {', '.join(available) or '(none)'}")
    resource = resources.files("builder") / "domains" / domain / CORPUS_FILE
    if not isinstance(resource, Path):  # e.g. a zipped install: no plain file on disk
        raise RuntimeError(f"packaged corpus for {domain!r} is not a file on disk: {resource}")
    return resource
