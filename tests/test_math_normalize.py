"""Answer extraction and string normalization (no worker processes involved)."""

from __future__ import annotations

import pytest

from alignlib.rewards import extract_boxed, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last box
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),  # nested braces
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("\\fbox{7}", "7"),
        ("\\boxed{3} and \\fbox{4}", "4"),
        ("$\\boxed 5$", "5"),
        ("\\boxed{ 12 }", "12"),
        ("no box here", None),
        ("\\boxed{1} then \\boxed{2", None),  # last box truncated: no fallback to the first
        (
            "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        ),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\\text{(B)}", "B"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("1,000", "1000"),
        ("1,000,000.5", "1000000.5"),
        ("(1,000)", "(1,000)"),  # a tuple, not a thousands separator
        ("1{,}000", "1000"),
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("\\tfrac34", "\\frac{3}{4}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("3/4", "\\frac{3}{4}"),
        ("2\\frac{1}{2}", "\\frac{5}{2}"),
        ("-1\\frac{1}{4}", "-\\frac{5}{4}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("30^\\circ", "30"),
        ("30^{\\circ}", "30"),
        ("50\\%", "50"),
        ("\\$1,000.00", "1000"),
        ("5\\text{ cm}^2", "5"),
        ("18 dollars", "18"),
        ("1.6 \\mathrm{~cm}", "1.6"),
        ("x = 3", "3"),
        ("k=\\frac{1}{2}", "\\frac{1}{2}"),
        ("x+y=3", "x+y=3"),  # not a single-variable prefix: kept
        ("-0", "0"),
        ("-0.00", "0"),
        (".5", "0.5"),
        ("2.50", "2.5"),
        ("27.0", "27"),
        ("007", "7"),
        ("\\text{Monday}", "monday"),
        ("\\frac{5}{2}\\mathrm{i}", "\\frac{5}{2}i"),  # one bare letter may be i: not a unit
        ("6.02e23", "6.02\\times10^{23}"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)"),
        (
            "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        ),
        ("\\!5\\,000.", "5000"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_normalize_keeps_distinct_answers_distinct() -> None:
    distinct = [
        "12",
        "21",
        "1/3",
        "0.33",
        "[1,2)",
        "[1,2]",
        "(1,2)",
        "(2,1)",
        "x",
        "-x",
        "1000",
        "100",
    ]
    assert len({normalize_answer(a) for a in distinct}) == len(distinct)
