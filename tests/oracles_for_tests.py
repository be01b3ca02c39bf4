"""Oracles for INPO tests, referenced as `oracles_for_tests:NAME` (module:function)."""


def shortest(completion: str, **_: object) -> float:
    """Prefer shorter completions: a preference a tiny random model can show quickly."""
    return -float(len(completion))


def shortest_unless_tie(completion: str, tie: bool = False, **_: object) -> float:
    """``shortest``, except on rows marked `tie`, where every response scores alike."""
    return 0.0 if tie else -float(len(completion))
