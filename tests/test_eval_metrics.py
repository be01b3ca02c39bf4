"""pass@k, avg@k, maj@k and confidence intervals."""

from __future__ import annotations

import math
import statistics

import pytest

from alignlib.eval.metrics import avg_at_k, maj_at_k, mean_with_ci, pass_at_k


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_combinatorial_formula_for_all_small_cases() -> None:
    checked = 0
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)
                checked += 1
    assert checked == sum(n * (n + 1) for n in range(1, 13))


def test_pass_at_k_edges() -> None:
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c = 4 < k: every 5-subset holds a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the plain accuracy
    # Large n: the product form stays finite where the binomials would be astronomically big.
    assert 0.0 < pass_at_k(10_000, 3, 100) < 1.0
    assert pass_at_k(10_000, 3, 100) == pytest.approx(exact_pass_at_k(10_000, 3, 100), rel=1e-9)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((5, 2, 6), r"k must be in \[1, n=5\], got k=6"),
        ((5, 2, 0), r"k must be in \[1, n=5\]"),
        ((5, 6, 1), r"c \(correct samples\) must be in \[0, n=5\]"),
        ((0, 0, 1), r"n \(samples per problem\) must be >= 1"),
    ],
)
def test_pass_at_k_bad_arguments(args: tuple[int, int, int], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        pass_at_k(*args)


def test_pass_at_k_rejects_non_integers() -> None:
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(5, 2, 2.0)  # type: ignore[arg-type]


def test_avg_at_k() -> None:
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([False]) == 0.0
    with pytest.raises(ValueError, match="no samples"):
        avg_at_k([])


def test_maj_at_k_majority() -> None:
    answers = ["3", "4", "4", "3", "4"]
    correct = [True, False, False, True, False]
    assert maj_at_k(answers, correct) is False  # "4" has 3 votes
    assert maj_at_k(answers, correct, k=1) is True  # only "3" votes
    assert maj_at_k(answers, correct, k=3) is False  # "4" leads 2 to 1


def test_maj_at_k_ties_go_to_the_first_seen_answer() -> None:
    assert maj_at_k(["3", "4", "4", "3"], [True, False, False, True], k=4) is True
    assert maj_at_k(["4", "3", "3", "4"], [False, True, True, False], k=4) is False
    assert maj_at_k(["5", "3", "4"], [False, True, False]) is False  # 3-way tie: "5" first


def test_maj_at_k_none_does_not_vote() -> None:
    answers = [None, None, None, "7"]
    assert maj_at_k(answers, [False, False, False, True]) is True
    assert maj_at_k([None, None], [False, False]) is False
    # None ahead of a tie does not count as "first seen".
    assert maj_at_k([None, "2", "1"], [False, True, False]) is True


def test_maj_at_k_bad_arguments() -> None:
    with pytest.raises(ValueError, match="2 answers but 1 correctness flags"):
        maj_at_k(["1", "2"], [True])
    with pytest.raises(ValueError, match=r"k must be in \[1, 2\]"):
        maj_at_k(["1", "2"], [True, False], k=3)


def test_mean_with_ci_wilson_for_binary() -> None:
    mean, low, high = mean_with_ci([1, 0, 1, 1] * 25)  # 75 of 100
    assert mean == 0.75
    # Wilson 95% interval for 75/100 (textbook value 0.6569 .. 0.8245).
    assert low == pytest.approx(0.6569, abs=1e-3)
    assert high == pytest.approx(0.8245, abs=1e-3)
    mean, low, high = mean_with_ci([0] * 20)
    assert (mean, low) == (0.0, 0.0) and 0.1 < high < 0.2  # not a degenerate [0, 0]


def test_mean_with_ci_normal_for_continuous() -> None:
    values = [0.2, 0.5, 0.9, 0.4, 0.7]
    mean, low, high = mean_with_ci(values, confidence=0.9)
    half = 1.6448536 * statistics.stdev(values) / math.sqrt(len(values))
    assert mean == pytest.approx(0.54)
    assert (low, high) == pytest.approx((0.54 - half, 0.54 + half))
    assert all(math.isnan(x) for x in mean_with_ci([0.5])[1:])


def test_mean_with_ci_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no values"):
        mean_with_ci([])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        mean_with_ci([1.0], confidence=95)
