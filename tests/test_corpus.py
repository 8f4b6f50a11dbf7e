"""The Judge's lookup corpora: packaged data sanity, BM25 ranking, and loader error messages."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from builder.corpus import Corpus, Passage, packaged_corpus, packaged_domains, tokenize

DOMAINS = ["science", "medical", "math"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("domain", DOMAINS)
def test_packaged_corpus_loads_with_unique_ids_and_nonempty_fields(domain: str) -> None:
    path = packaged_corpus(domain)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    corpus = Corpus.load(path)
    assert len(corpus) == len(rows) >= 20
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for r in rows:
        assert set(r) == {"id", "title", "text"}
        assert all(isinstance(r[f], str) and r[f].strip() for f in ("id", "title", "text"))
        assert 40 <= len(r["text"].split()) <= 120, r["id"]


def test_packaged_domains_include_the_three_corpora() -> None:
    assert set(DOMAINS) <= set(packaged_domains())


def test_spcas9_pam_query_returns_the_spcas9_pam_passage_first() -> None:
    corpus = Corpus.load(packaged_corpus("science"))
    hits = corpus.search("PAM sequence for SpCas9")
    assert hits[0][0].id == "sci-spcas9-pam"
    assert "NGG" in hits[0][0].text


def test_anion_gap_query_finds_the_acid_base_passage() -> None:
    corpus = Corpus.load(packaged_corpus("medical"))
    hits = corpus.search("anion gap")
    assert hits[0][0].id == "med-anion-gap"
    assert "Na - (Cl + HCO3)" in hits[0][0].text


@pytest.mark.parametrize(
    ("domain", "query", "expected"),
    [
        ("science", "AAV packaging limit", "sci-aav"),
        ("science", "delta delta Ct fold change", "sci-qpcr-ddct"),
        ("medical", "Cockcroft-Gault creatinine clearance", "med-cockcroft-gault"),
        ("medical", "number needed to treat", "med-nnt"),
        ("math", "compound interest formula", "math-compound-interest"),
    ],
)
def test_topical_queries_rank_their_passage_first(domain: str, query: str, expected: str) -> None:
    assert Corpus.load(packaged_corpus(domain)).search(query, k=1)[0][0].id == expected


@pytest.fixture
def tiny(tmp_path: Path) -> Corpus:
    # Tokens (title + text): a = [alpha, cat, cat, dog] (4), b = [beta, cat, fish] (3),
    # c = [gamma, dog, dog, dog, bird, bird] (6); avgdl = 13/3, N = 3.
    rows = [
        {"id": "a", "title": "Alpha", "text": "cat cat dog"},
        {"id": "b", "title": "Beta", "text": "the cat and a fish"},
        {"id": "c", "title": "Gamma", "text": "dog dog dog bird bird"},
    ]
    return Corpus.load(_write_jsonl(tmp_path / "tiny.jsonl", rows))


def test_bm25_scores_match_hand_computation(tiny: Corpus) -> None:
    k1, b, avgdl = 1.5, 0.75, 13 / 3
    idf_cat = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # cat in a, b
    idf_bird = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # bird in c only

    def term(idf: float, tf: int, dl: int) -> float:
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    expected = {"c": term(idf_bird, 2, 6), "a": term(idf_cat, 2, 4), "b": term(idf_cat, 1, 3)}
    hits = tiny.search("the cat or bird?", k=3)
    assert [p.id for p, _ in hits] == ["c", "a", "b"]  # rare 'bird' outweighs twice-seen 'cat'
    for p, score in hits:
        assert score == pytest.approx(expected[p.id], rel=1e-12)
    assert expected["c"] == pytest.approx(1.2470, abs=1e-3)


def test_search_respects_k_and_drops_unmatched_passages(tiny: Corpus) -> None:
    assert [p.id for p, _ in tiny.search("cat", k=1)] == ["a"]
    assert [p.id for p, _ in tiny.search("fish", k=3)] == ["b"]
    assert tiny.search("the and of", k=3) == []  # stopwords only
    with pytest.raises(ValueError):
        tiny.search("cat", k=0)


def test_equal_scores_are_ordered_by_id() -> None:
    corpus = Corpus([Passage("z", "same", "cat dog"), Passage("y", "same", "cat dog"), Passage("x", "other", "fish")])
    assert [p.id for p, _ in corpus.search("cat")] == ["y", "z"]


def test_tokenize_lowercases_and_drops_stopwords() -> None:
    assert tokenize("The PAM of SpCas9 is 5'-NGG-3'") == ["pam", "spcas9", "5", "ngg", "3"]


def test_malformed_line_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "title": "t", "text": "x"}\n\n{"id": "broken", "title": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3")):
        Corpus.load(path)


def test_missing_field_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "missing.jsonl", [{"id": "a", "title": "t", "text": "x"}, {"id": "b", "title": "t"}]
    )
    with pytest.raises(ValueError, match=re.escape(f"{path}:2") + r".*'text'"):
        Corpus.load(path)


def test_duplicate_id_is_rejected_with_both_lines(tmp_path: Path) -> None:
    row = {"id": "a", "title": "t", "text": "x"}
    path = _write_jsonl(tmp_path / "dup.jsonl", [row, row])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2") + r".*line 1"):
        Corpus.load(path)


def test_unknown_domain_raises_value_error_listing_domains() -> None:
    with pytest.raises(ValueError, match="chemistry") as err:
        packaged_corpus("chemistry")
    for domain in DOMAINS:
        assert domain in str(err.value)
