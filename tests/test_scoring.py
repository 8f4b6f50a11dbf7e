"""Scoring as the benchmarks' authors score: number extraction, PAL's absolute tolerance, paired comparisons
(paired bootstrap CI, McNemar's exact test) and the MultiMedQA aggregate. No model: hand-made outputs and flags."""

from __future__ import annotations

import math

import pytest

from nanoflux.scoring import (
    aggregate_results,
    extract_number,
    is_correct,
    mcnemar_exact,
    paired_comparison,
    paired_comparisons,
)

# --- numbers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output, expected",
    [
        ("Final answer: 1/3", 1 / 3),  # a fraction is its value, not its numerator
        ("So each gets 3/4 of a pizza.", 0.75),
        ("Final answer: \\frac{2}{3}", 2 / 3),
        ("\\boxed{\\dfrac{7}{2}}", 3.5),
        ("Final answer: 2 1/2 cups", 2.5),  # a mixed number
        ("Final answer: 2.5 million", 2_500_000.0),
        ("The company earned 3 billion dollars.", 3e9),
        ("Final answer: 12 thousand", 12_000.0),
        ("Final answer: 12,345,678.9", 12_345_678.9),
        ("Final answer: 1\u202f234\u202f567", 1_234_567.0),  # thin-space thousands separators
        ("Final answer: 1.5e6", 1_500_000.0),
        ("Final answer: 1.5 × 10^6", 1_500_000.0),
        ("Final answer: 4 \\times 10^{-3}", 0.004),
        ("Final answer: -7", -7.0),
        ("Final answer: −9867630", -9867630.0),  # a Unicode minus
        ("The temperature fell from 4 to -7 degrees.", -7.0),
        ("10/2 = 5, so the answer is 5.", 5.0),
        ("The counts were 1,2,3", 3.0),
        ("Final answer: 42.", 42.0),
        ("#### 1,000", 1000.0),
        ("Final answer: 5/0", None),  # no value
    ],
)
def test_extract_number_reads_fractions_scales_separators_and_notation(output, expected):
    got = extract_number(output)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_numbers_are_right_only_within_pal_absolute_tolerance():
    # GSM-Hard targets are large: target ± 1 must be wrong (a relative 1e-4 tolerance accepted it).
    assert is_correct(3431580.0, 3431580.0, "number")
    assert not is_correct(3431581.0, 3431580.0, "number")
    assert not is_correct(84786105.0, 84786104.0, "number")
    assert is_correct(517.0304, 517.03, "number")  # |diff| = 4e-4 < 1e-3
    assert not is_correct(517.032, 517.03, "number")  # |diff| = 2e-3
    assert not is_correct(1.0, 0.0, "number", abs_tol=1.0)  # strictly less, as PAL compares
    assert is_correct(0.0, 0.0, "number") and not is_correct(None, 42.0, "number")
    assert is_correct(1 / 3, 0.333333, "number")
    # A benchmark with real-valued answers may add a relative tolerance.
    assert is_correct(1000.5, 1000.0, "number", rel_tol=1e-3) and not is_correct(
        1002.0, 1000.0, "number", rel_tol=1e-3
    )


# --- paired comparisons ----------------------------------------------------------------------------------


def test_mcnemar_exact_is_the_two_sided_binomial_tail_of_the_discordant_pairs():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 2**10)
    assert mcnemar_exact(0, 10) == mcnemar_exact(10, 0)
    assert mcnemar_exact(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 2**10)  # 0.109375
    assert 0 < mcnemar_exact(3000, 3300) < 0.001  # thousands of pairs: exact integers, no underflow


def test_a_planted_improvement_has_a_paired_ci_that_excludes_zero_and_a_small_p():
    base = [True] * 40 + [False] * 60
    adapter = [True] * 40 + [True] * 25 + [False] * 35  # right on every question base got, and 25 more
    result = paired_comparison(adapter, base, samples=2000, seed=0)
    assert (result["n"], result["wins"], result["losses"]) == (100, 25, 0)
    assert result["delta"] == pytest.approx(0.25)
    assert 0 < result["ci_low"] < 0.25 < result["ci_high"]
    assert result["p_value"] == pytest.approx(2 / 2**25)
    assert paired_comparison(adapter, base, samples=2000, seed=0) == result  # deterministic for a seed
    worse = paired_comparison(base, adapter, samples=2000, seed=0)
    assert worse["delta"] == pytest.approx(-0.25) and worse["ci_high"] < 0


def test_identical_models_differ_by_exactly_zero_with_p_one():
    flags = [True, False, True, True, False] * 20
    result = paired_comparison(flags, list(flags))
    assert result["delta"] == 0.0 and (result["ci_low"], result["ci_high"]) == (0.0, 0.0)
    assert result["ci_low"] <= 0.0 <= result["ci_high"]
    assert (result["wins"], result["losses"], result["p_value"]) == (0, 0, 1.0)


def test_the_paired_ci_is_narrower_than_treating_the_arms_as_independent():
    # Two arms that agree on most questions: resampling the same questions for both keeps their correlation.
    a = [True] * 50 + [False] * 40 + [True] * 7 + [False] * 3
    b = [True] * 50 + [False] * 40 + [False] * 7 + [True] * 3
    result = paired_comparison(a, b, samples=2000)
    assert result["delta"] == pytest.approx(0.04)
    assert result["ci_low"] <= 0.04 <= result["ci_high"]
    assert (
        result["ci_high"] - result["ci_low"] < 0.15
    )  # an unpaired interval would be about 0.28 wide (±1.96·√(2·.25/100))


def test_paired_comparisons_cover_every_pair_of_evaluated_variants_on_the_same_ids():
    details = {
        v: [{"id": str(i), "correct": c} for i, c in enumerate(flags)]
        for v, flags in {"base": [0, 0, 1, 1], "adapter": [1, 0, 1, 1], "baseline": [1, 1, 1, 0]}.items()
    }
    pairs = paired_comparisons(details, samples=200)
    assert list(pairs) == ["adapter-vs-base", "adapter-vs-baseline", "baseline-vs-base"]
    assert pairs["adapter-vs-base"]["variant"] == "adapter" and pairs["adapter-vs-base"]["reference"] == "base"
    assert pairs["adapter-vs-base"]["delta"] == 0.25 and pairs["adapter-vs-baseline"]["delta"] == 0.0
    assert (pairs["adapter-vs-baseline"]["wins"], pairs["adapter-vs-baseline"]["losses"]) == (1, 1)
    assert list(paired_comparisons({"adapter": details["adapter"]})) == []  # nothing to compare with
    shuffled = {"base": details["base"][::-1], "adapter": details["adapter"]}
    with pytest.raises(ValueError, match="not evaluated on the same examples"):
        paired_comparisons(shuffled)


# --- aggregates ------------------------------------------------------------------------------------------


def _details(**flags: list[int]) -> dict[str, list[dict]]:
    return {
        variant: [{"id": str(i), "correct": bool(c)} for i, c in enumerate(values)]
        for variant, values in flags.items()
    }


def test_multimedqa_aggregate_is_macro_and_micro_with_cis_and_paired_deltas():
    details = {
        "medqa": _details(base=[1, 0, 0, 0], adapter=[1, 1, 1, 0]),  # 0.25 -> 0.75
        "pubmedqa": _details(base=[1] * 6 + [0] * 6, adapter=[1] * 6 + [0] * 6),  # 0.5 -> 0.5 (12 questions)
    }
    agg = aggregate_results("multimedqa", ["medqa", "pubmedqa"], details, samples=500, seed=0)
    base, adapter = agg["variants"]["base"], agg["variants"]["adapter"]
    assert (
        base["macro"] == pytest.approx((0.25 + 0.5) / 2) and base["micro"] == pytest.approx(7 / 16) and base["n"] == 16
    )
    assert adapter["macro"] == pytest.approx((0.75 + 0.5) / 2) and adapter["micro"] == pytest.approx(9 / 16)
    for r in (base, adapter):
        assert (
            r["macro_ci_low"] <= r["macro"] <= r["macro_ci_high"]
            and r["micro_ci_low"] <= r["micro"] <= r["micro_ci_high"]
        )
    pair = agg["paired"]["adapter-vs-base"]
    assert pair["macro_delta"] == pytest.approx(0.25) and pair["micro_delta"] == pytest.approx(2 / 16)
    assert (pair["wins"], pair["losses"], pair["p_value"]) == (2, 0, 0.5)
    assert pair["macro_ci_low"] <= pair["macro_delta"] <= pair["macro_ci_high"]
    assert aggregate_results("multimedqa", ["medqa", "pubmedqa"], details, samples=500, seed=0) == agg
    assert math.isnan(
        aggregate_results("x", [], {}, samples=100)["variants"].get("base", {"macro": math.nan})["macro"]
    )
