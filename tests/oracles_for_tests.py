"""Oracles for INPO tests, referenced as `oracles_for_tests:NAME` (module:function)."""


def shortest(completion: str, **_: object) -> float:
    """Prefer shorter completions: a preference a tiny random model can show quickly."""
    return -float(len(completion))
