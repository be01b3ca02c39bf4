"""Whether an algorithm's terms can train on a data set's rows (called by the trainer's preflight).

Each term trains on the rows of some roles (chosen, rejected, demo), and each format gives the
roles of its sequence fields (``SEQUENCE_FIELDS``). A role the format lacks is a term that selects
no row and trains nothing without a word: DPO on {prompt, completion} rows (loss 0, grad 0, an
untrained model saved), TPO's gold term on pairs without `reference`. And a term that imitates
every row it selects (SFT, an NLL on all rows) given pairs would train on the rejected
completions too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignlib.data.collate import roles_of
from alignlib.data.errors import DataError
from alignlib.data.formats import FORMAT_FIELDS
from alignlib.estimator import Role
from alignlib.estimator.advantages import ConstantAdvantage
from alignlib.estimator.kto import KTOWeights
from alignlib.estimator.preferences import PairwiseAdvantage
from alignlib.estimator.regularizers import NLL

PAIR = frozenset({Role.CHOSEN, Role.REJECTED})
WANTED_FORMATS = ("sft", "preference", "tpo", "kto")
"""Smallest first: the format named as needed is the first that gives every role needed."""


def described(fmt: str, row: dict[str, Any]) -> str:
    """'sft rows {prompt, completion}' (or {messages}, as the row has it)."""
    fields = ("messages",) if fmt == "sft" and "messages" in row else FORMAT_FIELDS[fmt]
    return f"{fmt} rows {{{', '.join(fields)}}}"


def _selected(term: Any, given: frozenset[Role]) -> frozenset[Role]:
    """The roles ``term`` trains on: its selector's (every given role when it selects all), and
    chosen + rejected for a pairwise weight, which needs both whatever rows it selects."""
    rows = getattr(term, "rows", None)
    roles = given if rows is None or rows.roles is None else frozenset(rows.roles)
    advantage = getattr(term, "advantage", None)
    if isinstance(advantage, PairwiseAdvantage):
        roles |= PAIR
    if getattr(advantage, "needs_kl_rows", False):
        roles |= {Role.KL}  # its reference point is estimated on mismatched pairs
    return roles


def wanted_formats(terms: Sequence[Any]) -> list[str]:
    """The smallest row format giving every role ``terms`` train on (``alignlib config methods``
    names it), then kto rows where they serve as well (no term compares a pair's two
    completions); a term selecting rows by trace flag (BVPO) needs `trace` too."""
    if any(getattr(getattr(t, "rows", None), "trace", None) is not None for t in terms):
        return ["bvpo"]
    needed = frozenset().union(*(_selected(t, frozenset()) for t in terms))
    smallest = next((f for f in WANTED_FORMATS if needed <= roles_of(f)), "tpo")
    pairwise = any(isinstance(getattr(t, "advantage", None), PairwiseAdvantage) for t in terms)
    unpaired_too = smallest == "preference" and not pairwise
    return [smallest, "kto"] if unpaired_too else [smallest]


def _imitates_every_row(term: Any) -> bool:
    """A term that raises the likelihood of every row, whatever its role (SFT, an NLL on all
    rows). A term that names its roles (RPO's NLL on chosen rows, an unlikelihood term on
    rejected ones) chose them, and is not one."""
    rows = getattr(term, "rows", None)
    if rows is not None and rows.roles is not None:
        return False
    advantage = getattr(term, "advantage", None)
    return isinstance(term, NLL) or (
        isinstance(advantage, ConstantAdvantage) and advantage.value > 0
    )


def check_fit(
    terms: Sequence[Any], fmt: str, row: dict[str, Any], source: str, algorithm: str
) -> None:
    """Refuse rows of format ``fmt`` (``row``: the first) that ``algorithm``'s terms cannot train
    on as intended, in one line naming the file, the format needed and the fields missing."""
    given = roles_of(fmt)
    has = described(fmt, row)
    for term in terms:
        if fmt == "kto" and isinstance(getattr(term, "advantage", None), PairwiseAdvantage):
            raise DataError(
                f"algorithm {algorithm} compares the two completions of a pair; {source} has "
                f"{has}, each completion alone (unpaired); use algorithm kto, or give rows "
                "{prompt, chosen, rejected}"
            )
        missing = _selected(term, given) - given
        if missing:
            name = getattr(term, "name", type(term).__name__)
            needed = frozenset().union(*(_selected(t, given) for t in terms))
            want = next((f for f in WANTED_FORMATS if needed <= roles_of(f)), "tpo")
            absent = [f for f in FORMAT_FIELDS[want] if f not in FORMAT_FIELDS.get(fmt, ())]
            fix = (
                "give rows with chosen and rejected completions, or use algorithm sft for "
                "these rows"
                if missing & PAIR
                else "unpair the data: each pair gives {prompt, completion: chosen, label: true} "
                "and {prompt, completion: rejected, label: false}"
                if Role.KL in missing
                else f"add {' and '.join(repr(f) for f in absent)} to every row"
            )
            raise DataError(
                f"algorithm {algorithm} needs {described(want, {})}; {source} has {has}, without "
                f"{', '.join(repr(f) for f in absent)} (its '{name}' term would select no row and "
                f"train nothing); {fix}"
            )
        if _imitates_every_row(term) and Role.REJECTED in given:
            raise DataError(
                f"algorithm {algorithm}: data {source} has {has}; SFT trains on {{prompt, "
                f"completion}} rows, and its '{getattr(term, 'name', type(term).__name__)}' term "
                "would train on every rejected completion too; give {prompt, completion} rows "
                "(e.g. chosen renamed to completion), or use a preference method (dpo, ipo, tpo)"
            )


def label_balance(terms: Sequence[Any], rows: Sequence[dict[str, Any]], source: str) -> str | None:
    """A warning when the labelled (kto) rows' mix of desirable and undesirable examples is
    outside what a KTO term's weights are advised for; None otherwise."""
    for term in terms:
        advantage = getattr(term, "advantage", None)
        if isinstance(advantage, KTOWeights) and rows and "label" in rows[0]:
            desirable = sum(bool(row["label"]) for row in rows)
            advice = advantage.balance_advice(desirable, len(rows) - desirable)
            if advice is not None:
                return f"{source}: {advice}"
    return None
