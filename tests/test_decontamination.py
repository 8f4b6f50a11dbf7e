"""Decontamination against evaluation benchmarks: the fixture benchmarks of configs/eval/local.yaml, real embedder.

tests/fixtures/decontamination/rows.jsonl holds eight clean questions and three planted ones, each with the detectors
expected to fire (`expect`): a verbatim MedQA fixture question, a paraphrase of a GSM-Hard fixture question with
its numbers changed, and a new question that starts with a Genome-Bench fixture question's context word for word.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.decontamination import DecontaminationConfig, check, counts, decontaminate, report, write_report
from builder.reference import DecontaminationError, Reference, ReferenceItem, load_reference, ngrams, words
from builder.screen import Screen
from nanoflux.recipe import ConfigError, from_dict

ROWS = Path(__file__).parent / "fixtures" / "decontamination" / "rows.jsonl"
LOCAL_RECIPE = "configs/eval/local.yaml"
PLANTED = ["verbatim-medqa", "gsm-hard-paraphrase", "near-verbatim-genome"]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return load_reference(LOCAL_RECIPE)


@pytest.fixture(scope="module")
def embedder():
    from builder.novelty import load_embedder

    return load_embedder("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture
def rows() -> list[dict]:
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]


def _only(detector: str) -> DecontaminationConfig:
    return DecontaminationConfig(
        ngram=8 if detector == "ngram" else None,
        numbers=detector == "numbers",
        embedding_threshold=0.9 if detector == "embedding" else None,
    )


def test_reference_holds_every_fixture_question_with_its_options(reference):
    assert [(b.name, b.questions) for b in reference.benchmarks] == [
        ("gsm-hard", 8),
        ("medqa", 8),
        ("medmcqa", 8),
        ("pubmedqa", 8),
        ("mmlu-clinical_knowledge", 8),
        ("genome-bench", 8),
    ]  # every row of each split, not only the recipe's `limit: 4`
    medqa = next(item for item in reference.items if item.benchmark == "medqa")
    assert (
        medqa.item_id == "0"
        and medqa.options[1] == "Acute pyelonephritis"
        and "(B) Acute pyelonephritis" in medqa.text
    )
    medmcqa = next(item for item in reference.items if item.benchmark == "medmcqa")
    assert (
        medmcqa.item_id == "e9ad821a-c438-4965-9f77-760819dfa155" and len(medmcqa.options) == 4
    )  # id column, option columns
    genome = next(item for item in reference.items if item.benchmark == "genome-bench")
    assert genome.options == () and "a. NGG" in genome.question  # inline options stay in the raw question


def test_planted_copies_are_dropped_and_clean_rows_kept(reference, embedder, rows):
    clean, contaminated = check(rows, reference, DecontaminationConfig(), embedder)
    assert len(rows) == 11 and len(clean) == 8 and len(contaminated) == 3
    assert [row["id"] for row in contaminated] == PLANTED
    assert all(row["id"].startswith("clean-") for row in clean) and clean == [
        r for r in rows if r["id"].startswith("clean-")
    ]
    for row in contaminated:
        assert [match["detector"] for match in row["contamination"]] == row["expect"], row["id"]
    verbatim, paraphrase, near = contaminated
    assert {m["benchmark"] for m in verbatim["contamination"]} == {"medqa"} and verbatim["contamination"][1][
        "score"
    ] == 1.0
    assert all(
        m["item_id"] == "0" and m["item_question"].startswith("A 23-year-old woman") for m in verbatim["contamination"]
    )
    assert {(m["benchmark"], m["item_id"]) for m in paraphrase["contamination"]} == {
        ("gsm-hard", "2")
    }  # Josh's house flip
    assert paraphrase["contamination"][1]["score"] >= 0.9  # cosine of the paraphrase
    assert {(m["benchmark"], m["item_id"]) for m in near["contamination"]} == {("genome-bench", "0")}
    assert counts(contaminated) == {
        "rows": 3,
        "by_benchmark": {"genome-bench": 1, "gsm-hard": 1, "medqa": 1},
        "by_detector": {"ngram": 2, "numbers": 3, "embedding": 2},
    }


def test_the_screen_checking_in_background_batches_finds_what_one_check_at_the_end_finds(reference, embedder, rows):
    config = DecontaminationConfig()
    clean, contaminated = check(rows, reference, config, embedder)
    screen = Screen(reference, config, embedder, batch=3)
    try:
        for row in rows[:7]:  # the rest were never submitted (as a resumed build's earlier rows): checked at the end
            screen.submit(row)
        screen.submit(rows[0])  # twice: checked once
        outcome = decontaminate(
            rows, config, domain="medical", embedder=embedder, reference=reference, matches=screen.matches(rows)
        )
    finally:
        screen.close()
    assert outcome.clean == clean and outcome.contaminated == contaminated
    assert [row["id"] for row in outcome.contaminated] == PLANTED


def test_a_disabled_screen_checks_nothing(reference, rows):
    screen = Screen(reference, DecontaminationConfig(enabled=False))
    screen.submit(rows[0])
    assert screen.matches(rows) == [[] for _ in rows]
    screen.close()


@pytest.mark.parametrize(
    ("detector", "flagged"),
    [
        ("ngram", ["verbatim-medqa", "near-verbatim-genome"]),  # the paraphrase shares no 8 words in a row
        ("numbers", PLANTED),  # number-masked: the paraphrase keeps 23% of the masked 8-grams
        (
            "embedding",
            ["verbatim-medqa", "gsm-hard-paraphrase"],
        ),  # a new question on the same context is not a paraphrase
    ],
)
def test_each_detector_alone(reference, embedder, rows, detector, flagged):
    clean, contaminated = check(rows, reference, _only(detector), embedder)
    assert [row["id"] for row in contaminated] == flagged and len(clean) == 11 - len(flagged)
    assert {m["detector"] for row in contaminated for m in row["contamination"]} == {detector}


def test_ngram_detector_only_needs_no_embedder_and_13_grams_are_stricter(reference, rows):
    clean, contaminated = check(rows, reference, DecontaminationConfig(numbers=False, embedding_threshold=None), None)
    assert [row["id"] for row in contaminated] == ["verbatim-medqa", "near-verbatim-genome"]
    # The Genome-Bench context copy is 21 words: it shares 13-grams too; a 30-gram needs more than the copied span.
    thirteen = check(rows, reference, DecontaminationConfig(ngram=13, numbers=False, embedding_threshold=None))[1]
    assert [row["id"] for row in thirteen] == ["verbatim-medqa", "near-verbatim-genome"]
    thirty = check(rows, reference, DecontaminationConfig(ngram=30, numbers=False, embedding_threshold=None))[1]
    assert [row["id"] for row in thirty] == ["verbatim-medqa"]
    with pytest.raises(ValueError, match="needs an embedder"):
        check(rows, reference, DecontaminationConfig(), None)


def test_a_number_swap_is_an_exact_masked_match():
    reference = Reference(
        [ReferenceItem("gsm", "7", "Tom buys 4821 pens at $3 each and sells 120 of them for $5 each on 9 days.")], []
    )
    swapped = {"id": "x", "question": "Tom buys 12 pens at $2.50 each and sells 7 of them for $4 each on 3 days."}
    config = DecontaminationConfig(embedding_threshold=None)
    clean, contaminated = check([swapped], reference, config)
    # Every 8-word window holds a number, so the plain n-grams miss it; masked, the texts are the same.
    assert [m["detector"] for m in contaminated[0]["contamination"]] == ["numbers"] and contaminated[0][
        "contamination"
    ][0]["score"] == 1.0
    assert check([swapped], reference, DecontaminationConfig(numbers=False, embedding_threshold=None))[1] == []


def test_stock_phrasing_shared_by_many_benchmark_questions_is_not_contamination():
    closing = "Which of the following is the most likely diagnosis?"
    items = [
        ReferenceItem(
            "medqa", str(i), f"A {20 + i}-year-old has symptom number {i} of a distinct disease {i}. {closing}"
        )
        for i in range(3)
    ]
    reference = Reference(items, [])
    row = {"id": "r", "question": f"A woman has a malar rash that worsens in sunlight and painful joints. {closing}"}
    config = DecontaminationConfig(embedding_threshold=None)
    assert check([row], reference, config)[1] == []  # the closing 8-grams are in 3 questions: boilerplate
    flagged = check([row], reference, DecontaminationConfig(embedding_threshold=None, boilerplate_items=None))[1]
    # open-r1's plain rule flags it; the masked detector wants a fifth of the n-grams shared (here 2 of 12)
    assert [m["detector"] for m in flagged[0]["contamination"]] == ["ngram"]
    # Duplicated benchmark questions count once: a copy of a question the benchmark repeats is still caught.
    repeated = Reference(
        [
            ReferenceItem(
                "medmcqa", str(i), "Koplik spots on the buccal mucosa are a sign of which viral infection in children?"
            )
            for i in range(4)
        ],
        [],
    )
    copy = {
        "id": "c",
        "question": "Koplik spots on the buccal mucosa are a sign of which viral infection in children?",
    }
    assert [
        m["item_id"]
        for m in check([copy], repeated, DecontaminationConfig(numbers=False, embedding_threshold=None))[1][0][
            "contamination"
        ]
    ] == ["0"]


def test_normalisation():
    assert words("(A) Acute  cystitis. B) 39.1°C, 23-year-old; Type-2") == [
        "acute",
        "cystitis",
        "39",
        "1",
        "c",
        "23",
        "year",
        "old",
        "type",
        "2",
    ]
    assert words("$4,933,828 and 2.5% of 16 eggs", numbers=True) == ["0", "and", "0", "of", "0", "eggs"]
    assert ngrams(words("one two three"), 8) == {"one two three"}  # shorter than n: compared whole
    assert ngrams(["a", "b", "c"], 2) == {"a b", "b c"} and ngrams([], 8) == set()


def test_disabled_returns_every_row(reference, rows):
    result = decontaminate(rows, DecontaminationConfig(enabled=False), domain="medical")
    assert result.clean == rows and result.contaminated == [] and result.reference is None
    assert result.summary()["checked"] is False and "enabled is false" in result.summary()["reason"]


def test_decontaminate_loads_the_recipe_and_summarises(embedder, rows):
    result = decontaminate(rows, DecontaminationConfig(eval_recipe=LOCAL_RECIPE), domain="medical", embedder=embedder)
    summary = result.summary()
    assert summary["checked"] and summary["eval_recipe"] == LOCAL_RECIPE and summary["rows_checked"] == 11
    assert summary["contaminated"]["rows"] == 3 and summary["detectors"] == ["ngram", "numbers", "embedding"]
    assert [b["questions"] for b in summary["benchmarks"]] == [8] * 6
    assert [row["id"] for row in result.contaminated] == PLANTED and len(result.clean) == 8


def test_report_files(reference, embedder, rows, tmp_path):
    contaminated = check(rows, reference, DecontaminationConfig(), embedder)[1]
    path = write_report(contaminated, tmp_path / "contaminated.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in records] == PLANTED and records[0]["question"].startswith("A 23-year-old woman")
    assert records[0]["contamination"][0]["item_question"].startswith("A 23-year-old woman")
    public = report(contaminated, texts=False).decode()
    assert (
        "23-year-old" not in public and "Josh" not in public and '"item_id": "2"' in public
    )  # ids only, no benchmark text


def test_bad_settings_are_rejected_with_field_value_and_fix(tmp_path):
    cases = [
        ({"ngram": 2}, r"decontamination\.ngram: out of range \(got 2\)\. Fix: use a value >= 3"),
        ({"embedding_threshold": 1.5}, r"decontamination\.embedding_threshold: out of range \(got 1\.5\)\. Fix"),
        (
            {"numbers_overlap": 0},
            r"decontamination\.numbers_overlap: out of range \(got 0\.0\)\. Fix: use a value > 0\.0 and <= 1\.0",
        ),
        ({"boilerplate_items": 0}, r"decontamination\.boilerplate_items: out of range \(got 0\)"),
        (
            {"ngram": None, "numbers": False, "embedding_threshold": None},
            r"decontamination: every detector is off .*enabled: false",
        ),
        (
            {"eval_recipe": str(tmp_path / "nope.yaml")},
            (
                r"decontamination\.eval_recipe: file not found \(got '.*nope\.yaml'\)\. Fix: point it at an evaluation"
                r" recipe"
            ),
        ),
    ]
    for fields, message in cases:
        with pytest.raises(ConfigError, match=message):
            from_dict(DecontaminationConfig, fields, prefix="decontamination.").validate("decontamination")
    with pytest.raises(
        ConfigError, match=r"decontamination\.ngarm: unknown field .*did you mean `decontamination\.ngram`"
    ):
        from_dict(DecontaminationConfig, {"ngarm": 8}, prefix="decontamination.")
    with pytest.raises(ConfigError, match=r"decontamination\.eval_recipe: no evaluation recipe for domain 'law'"):
        DecontaminationConfig().validate("decontamination", domain="law")
    DecontaminationConfig().validate("decontamination", domain="medical")  # configs/eval/medical.yaml
    DecontaminationConfig(enabled=False, ngram=None, numbers=False, embedding_threshold=None).validate(
        "decontamination", domain="law"
    )


def test_unreadable_benchmarks_fail_with_the_benchmark_and_the_fix(tmp_path):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        f"benchmarks:\n  - {{format: medqa, name: gone, path: {tmp_path / 'missing.jsonl'}, split: test}}\n"
    )
    with pytest.raises(
        DecontaminationError,
        match=r"benchmark gone \(.*missing\.jsonl \[test\]\).*could not be loaded.*Fix: .*configs/eval/local\.yaml",
    ):
        load_reference(recipe)
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"stem": "What?", "answer_idx": "A"}) + "\n")
    recipe.write_text(f"benchmarks:\n  - {{format: medqa, name: odd, path: {bench}, split: test}}\n")
    with pytest.raises(
        DecontaminationError, match=r"odd: column 'question' is not in .*Fix: map it with benchmarks\[\]\.columns"
    ):
        load_reference(recipe)
    with pytest.raises(DecontaminationError, match=r"no evaluation recipe for domain 'law'"):
        decontaminate([{"id": "x", "question": "q"}], DecontaminationConfig(), domain="law")


def test_benchmark_embeddings_are_cached_on_disk(reference, embedder, monkeypatch, tmp_path):
    monkeypatch.setenv("NANOFLUX_CACHE", str(tmp_path))
    fresh = load_reference(LOCAL_RECIPE)
    first = fresh.embeddings(embedder)
    (cached,) = (tmp_path / "decontamination").glob("*.npy")
    again = load_reference(LOCAL_RECIPE)
    from builder import novelty

    real_embed = novelty.embed

    def probe_only(model, texts):  # the cache key's probe sentence is embedded; the benchmark questions are not
        assert len(texts) == 1, "re-embedded the benchmark questions"
        return real_embed(model, texts)

    monkeypatch.setattr(novelty, "embed", probe_only)
    assert (
        (again.embeddings(embedder) == first).all()
        and first.shape == (48, 384)
        and cached.stat().st_size > 48 * 384 * 4
    )


def test_tiny_reference_sets_cannot_tell_stock_closings_from_copies_at_8_grams_but_13_grams_can(reference):
    rows = [
        {
            "id": "dx",
            "question": (
                "A 34-year-old woman has fatigue, joint pain and a malar rash that worsens in sunlight. Which of the"
                " following is the most likely diagnosis?"
            ),
            "options": ["SLE", "RA", "Dermatomyositis", "Psoriasis"],
        },
        {
            "id": "cause",
            "question": (
                "A 70-year-old man has a resting tremor and bradykinesia. Which of the following is the most likely"
                " cause of his symptoms?"
            ),
            "options": ["Dopamine loss", "Stroke"],
        },
    ]
    eight = check(rows, reference, DecontaminationConfig(embedding_threshold=None))[1]
    assert [(r["id"], [m["detector"] for m in r["contamination"]]) for r in eight] == [
        ("dx", ["ngram"]),
        ("cause", ["ngram"]),
    ]
    assert check(rows, reference, DecontaminationConfig(ngram=13, embedding_threshold=None))[1] == []
