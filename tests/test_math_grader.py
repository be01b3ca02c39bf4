"""The math grader against a hand-written table of verdicts a careful human grader would give.

Verdicts decided deliberately (not obvious, or not what math-verify alone would say) carry a
comment starting with "DECIDED".
"""

from __future__ import annotations

import threading
import time

import pytest

from alignlib.rewards import grade, grade_many, math_reward


def box(answer: str) -> str:
    return f"Reasoning goes here. The final answer is $\\boxed{{{answer}}}$."


PMATRIX = "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"

# (response, reference, expected verdict)
CASES: list[tuple[str, str, bool]] = [
    # fractions
    (box("\\frac{1}{2}"), "0.5", True),
    (box("0.5"), "\\frac{1}{2}", True),
    (box("\\dfrac{1}{2}"), "\\frac12", True),
    (box("\\tfrac{3}{4}"), "0.75", True),
    (box("1/2"), "\\frac{1}{2}", True),
    (box("\\frac{-1}{2}"), "-\\frac{1}{2}", True),
    # DECIDED: an unreduced fraction has the right value; we grade value, not presentation.
    (box("\\frac{2}{4}"), "\\frac{1}{2}", True),
    (box("1/3"), "0.33", False),
    (box("0.333"), "\\frac{1}{3}", False),
    # DECIDED: six correct decimals of a repeating fraction count (math-verify's precision).
    (box("0.142857"), "\\frac{1}{7}", True),
    # mixed numbers. DECIDED: 2\frac{1}{2} is read as the mixed number 2½, never as 2·½.
    (box("2\\frac{1}{2}"), "\\frac{5}{2}", True),
    (box("2\\frac{1}{2}"), "5/2", True),
    (box("2\\frac{1}{2}"), "1", False),
    (box("-1\\frac{1}{4}"), "-\\frac{5}{4}", True),
    # degrees
    (box("30^\\circ"), "30", True),
    (box("30"), "30^{\\circ}", True),
    (box("45\\text{ degrees}"), "45", True),
    # DECIDED: no degree/radian conversion; the reference's unit is the one asked for.
    (box("30^\\circ"), "\\frac{\\pi}{6}", False),
    # percent
    (box("50\\%"), "50", True),
    (box("50"), "50\\%", True),
    # DECIDED: 10% and 0.1 are the same number; math-verify reads % as /100.
    (box("10\\%"), "0.1", True),
    # DECIDED: a bare 0.5 for a reference of 50 (a "what percent" question) is wrong.
    (box("0.5"), "50", False),
    # intervals
    (box("[1,2)"), "[1,2]", False),
    (box("(2,3]"), "(2,3)", False),
    (box("(0,\\infty)"), "(0, \\infty)", True),
    (box("\\left(0,\\infty\\right)"), "(0,\\infty)", True),
    (box("(1,\\infty)\\cup(-\\infty,0)"), "(-\\infty, 0) \\cup (1, \\infty)", True),
    (box("(-\\infty,0]\\cup(1,\\infty)"), "(-\\infty, 0) \\cup (1, \\infty)", False),
    # DECIDED: an inequality describing the same set answers an interval (and vice versa).
    (box("x>0"), "(0,\\infty)", True),
    (box("1<x\\le 2"), "(1,2]", True),
    # tuples / ordered pairs
    (box("(1, 2)"), "(1,2)", True),
    (box("(2,1)"), "(1,2)", False),
    (box("(1,2,3)"), "(1,2)", False),
    (box("\\left(3, \\frac{\\pi}{2}\\right)"), "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    # matrices and vectors
    (box(PMATRIX), "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", True),
    (box("\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}"), PMATRIX, False),
    # DECIDED: a column vector and the tuple of its entries are the same answer.
    (box("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"), "(1,2)", True),
    (
        box("\\begin{pmatrix} 1 \\\\ -2 \\\\ 3 \\end{pmatrix}"),
        "\\begin{pmatrix}1\\\\2\\\\3\\end{pmatrix}",
        False,
    ),
    # units
    (box("5\\text{ cm}"), "5", True),
    (box("15 \\text{ cm}^2"), "15", True),
    (box("18 dollars"), "18", True),
    (box("\\$18.00"), "18", True),
    (box("1.6 \\mathrm{~cm}"), "1.6", True),
    (box("6\\text{ cm}"), "5", False),
    # \text{} wrappers and words
    (box("\\text{Monday}"), "Monday", True),
    (box("\\text{monday}"), "\\text{Monday}", True),
    (box("\\text{east}"), "\\text{west}", False),
    (box("\\text{(B)}"), "B", True),
    (box("(C)"), "\\text{(B)}", False),
    # thousands separators
    (box("1,000"), "1000", True),
    (box("1{,}000{,}000"), "1000000", True),
    (box("12,345.5"), "12345.5", True),
    (box("1,000"), "100", False),
    # negative zero, decimal forms
    (box("-0"), "0", True),
    (box("-0.0"), "0", True),
    (box(".5"), "0.5", True),
    (box("2.50"), "2.5", True),
    (box("27.0"), "27", True),
    # square roots
    (box("\\sqrt{8}"), "2\\sqrt{2}", True),
    (box("\\sqrt8"), "2\\sqrt2", True),
    (box("\\sqrt{12}"), "2\\sqrt{2}", False),
    (box("\\frac{\\sqrt{3}}{2}"), "\\frac{1}{2}\\sqrt{3}", True),
    (box("\\sqrt{2}/2"), "\\frac{\\sqrt2}{2}", True),
    (box("\\frac{1}{\\sqrt{2}}"), "\\frac{\\sqrt{2}}{2}", True),
    # pi
    (box("2\\pi"), "\\pi \\cdot 2", True),
    (box("\\frac{2\\pi}{6}"), "\\frac{\\pi}{3}", True),
    (box("\\frac{\\pi}{2}"), "1.57", False),
    # DECIDED: a rounded decimal is not the exact answer \pi.
    (box("3.14"), "\\pi", False),
    # equations
    (box("x=3"), "3", True),
    (box("3"), "x = 3", True),
    (box("x = -3"), "3", False),
    (box("y = 2x+3"), "y=2x+3", True),
    # multiple boxes: the last one wins
    ("First \\boxed{5}, no wait: \\boxed{7}", "7", True),
    ("First \\boxed{5}, no wait: \\boxed{7}", "5", False),
    # no (usable) box
    ("The answer is 7.", "7", False),
    ("The answer is \\boxed{}.", "7", False),
    ("The answer is \\boxed{7", "7", False),  # truncated: no closing brace
    # similar-looking wrong answers
    (box("12"), "21", False),
    (box("0.3"), "0.33", False),
    (box("-\\infty"), "\\infty", False),
    # nested braces
    (box("\\frac{a^{2}}{b_{1}}"), "\\frac{a^2}{b_1}", True),
    (box("\\frac{1}{\\frac{1}{2}}"), "2", True),
    # sets
    (box("\\{1,2\\}"), "\\{2,1\\}", True),
    (box("\\{1,2\\}"), "\\{1,2,3\\}", False),
    # DECIDED: listing the solutions "1, 2" answers "find all x" as well as the set does.
    (box("1, 2"), "\\{1,2\\}", True),
    (box("\\pm 3"), "-3, 3", True),
    (box("3"), "\\pm 3", False),  # only one of the two solutions
    # scientific notation
    (box("1.5\\times10^{3}"), "1500", True),
    (box("3 \\times 10^8"), "300000000", True),
    (box("6.02e23"), "6.02 \\times 10^{23}", True),
    # DECIDED: tiny numbers are compared relatively (1e-4); math-verify alone says True here.
    (box("1.325e-27"), "2.88e-19", False),
    # algebraic expressions
    (box("(x+1)^2"), "x^2+2x+1", True),
    (box("x^2+2x+1"), "(x-1)^2", False),
    (box("b+a"), "a+b", True),
    (box("2^{10}"), "1024", True),
    # other box forms, boxed reference
    ("So \\fbox{4}.", "4", True),
    ("Thus $\\boxed 5$.", "5", True),
    (box("9"), "The answer is $\\boxed{9}$.", True),
]


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    CASES,
    ids=[f"{i:02d}" for i in range(len(CASES))],
)
def test_grade_table(response: str, reference: str, expected: bool) -> None:
    assert grade(response, reference) is expected


def test_table_is_large_and_balanced() -> None:
    assert len(CASES) >= 70
    n_true = sum(expected for _, _, expected in CASES)
    assert 0.3 < n_true / len(CASES) < 0.7  # a grader that always says one thing fails half


def test_grade_many_matches_table() -> None:
    verdicts = grade_many([c[0] for c in CASES], [c[1] for c in CASES])
    wrong = [(i, c) for i, (c, v) in enumerate(zip(CASES, verdicts, strict=True)) if v is not c[2]]
    assert wrong == []


def test_threads_share_the_pool() -> None:
    chunks = [CASES[i::4] for i in range(4)]
    failures: list[tuple[str, str, bool]] = []

    def work(chunk: list[tuple[str, str, bool]]) -> None:
        failures.extend(c for c in chunk if grade(c[0], c[1]) is not c[2])

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_time_limit_holds_in_a_non_main_thread() -> None:
    assert grade(box("\\sqrt{8}"), "2\\sqrt{2}")  # starts the pool: start-up is not billed
    out: dict[str, object] = {}

    def work() -> None:
        start = time.monotonic()
        # sympy tries to evaluate 10^(10^10) exactly: this never finishes on its own.
        out["verdict"] = grade(box("10^{10^{10}}"), "1", timeout_s=0.3)
        out["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert out["verdict"] is False
    # It really waited for the limit (no early error), and returned soon after it.
    assert 0.3 <= out["elapsed"] < 5.0  # type: ignore[operator]
    assert grade(box("\\sqrt{8}"), "2\\sqrt{2}")  # the killed worker was replaced


def test_math_reward_is_float_and_ignores_extra_columns() -> None:
    assert math_reward(box("4"), "4", problem="2+2?", level=1) == 1.0
    assert math_reward(box("5"), answer="4") == 0.0
    assert math_reward("no box", "4") == 0.0


def test_numeric_reference_accepted() -> None:
    assert grade(box("27"), 27.0)  # type: ignore[arg-type]


def test_bad_input_errors_are_clear() -> None:
    with pytest.raises(TypeError, match="response must be a str, got NoneType"):
        grade(None, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        grade_many(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        grade(box("1"), "2", timeout_s=0)


def test_orphaned_worker_ends_itself() -> None:
    # If the parent never kills a stuck worker (it crashed, say), the worker's alarm does.
    from alignlib.rewards._verify_pool import _Worker

    worker = _Worker()
    try:
        assert worker.conn.recv() == "ready"
        worker.send_conn.send((0, [("1", "10^{10^{10}}")], 1))
        start = time.monotonic()
        worker.proc.wait(timeout=20)
        assert time.monotonic() - start < 10
        assert worker.proc.returncode != 0
    finally:
        worker.kill()


def test_worker_starts_from_a_checkout_folder(tmp_path, monkeypatch) -> None:
    # `python -m` puts the working directory first on sys.path. Run from a source checkout, whose
    # `alignlib/` folder lacks `rewards/`, the child imported that folder instead of the installed
    # package and died. This folder shadows `alignlib.rewards` with one that cannot be imported.
    from alignlib.rewards._verify_pool import _Worker

    shadow = tmp_path / "alignlib" / "rewards"
    shadow.mkdir(parents=True)
    (tmp_path / "alignlib" / "__init__.py").write_text("")
    (shadow / "__init__.py").write_text("raise ImportError('the shadow copy was imported')\n")
    monkeypatch.chdir(tmp_path)
    worker = _Worker()
    try:
        assert worker.conn.poll(60) and worker.conn.recv() == "ready"
    finally:
        worker.kill()
