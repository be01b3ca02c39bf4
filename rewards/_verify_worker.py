"""Code that runs inside a math-verify worker process (``python -m`` this module).

Kept separate and import-light so that the parent process never has to import sympy.
"""

from __future__ import annotations

import logging
import os
import signal
from multiprocessing.connection import Connection


def verify_pair(gold: str, pred: str) -> bool:
    """math-verify equivalence of two answer strings (each wrapped in ``\\boxed{}``).

    math-verify's own timeouts are off: ``signal.alarm`` cannot interrupt a long computation
    inside C code (a huge integer power), so the parent enforces the limit by killing this process.
    """
    from math_verify import parse, verify

    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)  # type: ignore[arg-type]
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)  # type: ignore[arg-type]
    if not gold_parsed or not pred_parsed:
        return False
    # allow_set_relation_comp: "x > 0" answers "(0, \\infty)"; it is the same set of x.
    if not verify(gold_parsed, pred_parsed, timeout_seconds=None, allow_set_relation_comp=True):
        return False
    try:
        return _close_if_numbers(gold_parsed[0], pred_parsed[0])
    except Exception:  # an extra check that cannot run must not overrule math-verify
        return True


# math-verify compares numbers after rounding to 6 decimals, so 1.3e-27 "equals" 2.9e-19.
# For two plain numbers we also require agreement to a relative 1e-4 (about 4 significant digits).
REL_TOL = 1e-4


def _close_if_numbers(gold: object, pred: object) -> bool:
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return True
    if not (gold.is_number and pred.is_number):  # symbolic answers: math-verify decides
        return True
    # Evaluated in sympy (30 digits): float() would overflow on huge integers such as 2^{2000}.
    # doit(): math-verify keeps e.g. "10\\%" as an unevaluated 10*(1/100).
    a, b = sympy.N(gold.doit(), 30), sympy.N(pred.doit(), 30)
    if not (isinstance(a, sympy.Float) and isinstance(b, sympy.Float)):
        return True  # complex or not reducible to one real number: math-verify decides
    scale = max(abs(a), abs(b))
    return bool(scale == 0 or abs(a - b) <= REL_TOL * scale)


def verify_any(pairs: list[tuple[str, str]]) -> bool:
    """True if any (gold, pred) pair verifies; a pair that raises counts as not equal."""
    for gold, pred in pairs:
        try:
            if verify_pair(gold, pred):
                return True
        except Exception:
            continue
    return False


def worker_main(conn_in: Connection, conn_out: Connection) -> None:
    """Serve ``(task_id, pairs, alarm_s)`` requests until the pipe closes or ``None`` arrives."""
    # Ctrl-C goes to the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # see the alarm below
    # Parse failures and the "timeout is disabled" notice are expected here, not news.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    import math_verify  # noqa: F401  (import before saying ready, so start-up is not billed)

    conn_out.send("ready")
    while True:
        try:
            msg = conn_in.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, pairs, alarm_s = msg
        # Self-destruct if the parent does not kill us in time (e.g. it died itself): SIGALRM
        # with no handler ends the process in the kernel, even while C code holds the GIL.
        signal.alarm(alarm_s)
        verdict = verify_any(pairs)
        signal.alarm(0)
        conn_out.send((task_id, verdict))


if __name__ == "__main__":
    # Protocol on our own copies of fds 0/1; fd 1 then points at stderr, so that a stray print()
    # in a library cannot corrupt the pickled messages.
    _in = Connection(os.dup(0), writable=False)
    _out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    worker_main(_in, _out)
