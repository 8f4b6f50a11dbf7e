from builder.config import CurationConfig
from builder.curation import curate


def _row(i, **changes):
    row = {
        "id": f"r00-a{i:04d}",
        "round": i // 10,
        "attack_index": i % 10,
        "novel": True,
        "judge_status": "ok",
        "question_valid": True,
        "quality_level": 4,
        "judge_complexity": 3,
        "defender_correct": True,
    }
    row.update(changes)
    return row


def test_only_ok_valid_novel_rows_in_the_quality_band_are_kept():
    rows = [
        _row(0),
        _row(1, judge_status="parse_error"),
        _row(2, judge_status=None, novel=False),
        _row(3, question_valid=False),
        _row(4, quality_level=3),
        _row(5, judge_status="tool_error"),
        _row(6, judge_status="refused"),
    ]
    assert [r["id"] for r in curate(rows, CurationConfig(target_size=10))] == ["r00-a0000"]


def test_defender_failures_rank_first_then_round_order_and_target_size_cuts():
    rows = [_row(0), _row(1, defender_correct=False), _row(12), _row(13, defender_correct=False)]
    kept = curate(rows, CurationConfig(target_size=3))
    assert [r["id"] for r in kept] == ["r00-a0001", "r00-a0013", "r00-a0000"]


def test_curation_is_deterministic_and_respects_complexity_levels():
    rows = [_row(i, judge_complexity=1 + i % 5, defender_correct=i % 3 == 0) for i in range(30)]
    policy = CurationConfig(quality_levels=[4], complexity_levels=[2, 3], target_size=8)
    first, second = curate(rows, policy), curate(list(reversed(rows)), policy)
    assert first == second and len(first) == 8
    assert all(r["judge_complexity"] in (2, 3) for r in first)


def test_require_valid_off_keeps_unvalidated_questions():
    rows = [_row(0, question_valid=False)]
    assert curate(rows, CurationConfig(require_valid=False, target_size=5)) == rows


def test_an_empty_curated_set_is_still_written_with_every_column(tmp_path):
    from builder.dataset import COLUMNS, write_rows

    dataset = write_rows([], tmp_path / "data" / "train.parquet", tmp_path / "curated.jsonl")
    assert dataset.num_rows == 0 and dataset.column_names == list(COLUMNS)
    assert (tmp_path / "curated.jsonl").read_text() == ""


def test_written_rows_are_what_datasets_itself_makes_of_them(tmp_path):
    import json

    import pyarrow.parquet as pq
    from datasets import Dataset

    from builder.dataset import COLUMNS, FEATURES, write_rows

    rows = [
        {**_row(i), "question": f"Question {i} – é?", "options": ["a", "b"] if i % 2 else None, "novel": bool(i % 3)}
        for i in range(7)
    ]
    dataset = write_rows(rows, tmp_path / "data" / "train.parquet", tmp_path / "curated.jsonl")
    reference = Dataset.from_dict({name: [row.get(name) for row in rows] for name in COLUMNS}, features=FEATURES)
    written = [json.loads(line) for line in (tmp_path / "curated.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written == list(reference) == list(dataset)
    assert dataset.features == reference.features
    parquet = pq.read_table(tmp_path / "data" / "train.parquet")
    assert parquet.to_pylist() == written and parquet.schema.types == reference.data.table.schema.types
