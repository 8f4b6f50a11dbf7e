import numpy as np
import pytest

from builder.novelty import NoveltyFilter


def _unit(*components):
    v = np.array(components, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_duplicate_is_dropped_orthogonal_kept_and_first_of_a_pair_wins():
    a = _unit(1, 0, 0)
    b = _unit(0, 1, 0)
    decisions = NoveltyFilter(threshold=0.9).check(np.stack([a, b, a, b * 3.0]))
    assert [d.novel for d in decisions] == [True, True, False, False]
    assert [d.nearest_similarity for d in decisions] == pytest.approx([0.0, 0.0, 1.0, 1.0])


def test_similarity_exactly_at_threshold_counts_as_duplicate_and_just_below_is_kept():
    first = _unit(1, 0)
    at = _unit(0.8, 0.6)  # cosine with `first` = 0.8
    below = _unit(0.79, np.sqrt(1 - 0.79**2))
    assert [d.novel for d in NoveltyFilter(0.8).check(np.stack([first, at]))] == [True, False]
    decisions = NoveltyFilter(0.8).check(np.stack([first, below]))
    assert decisions[1].novel and decisions[1].nearest_similarity == pytest.approx(0.79, abs=1e-6)


def test_bank_of_earlier_questions_rejects_their_near_duplicates():
    bank = np.stack([_unit(1, 0, 0), _unit(0, 1, 0)])
    f = NoveltyFilter(0.95, bank=bank)
    decisions = f.check(np.stack([_unit(1, 0.01, 0), _unit(0, 0, 1)]))
    assert [d.novel for d in decisions] == [False, True]
    assert f.size == 3  # bank + the one accepted candidate


def test_rejected_candidates_do_not_join_the_bank():
    f = NoveltyFilter(0.9)
    f.check(np.stack([_unit(1, 0), _unit(1, 0.1)]))
    assert f.size == 1


def test_many_accepts_grow_the_matrix_without_losing_rows():
    rng = np.random.default_rng(0)
    f = NoveltyFilter(0.999)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    assert all(d.novel for d in f.check(vectors))
    assert f.size == 300
    assert not f.check(vectors[123:124])[0].novel
