"""training_curves.png as a dashboard: what a user of the method watches comes first.

Order: reward and accuracy (held-out first), loss, the method's own signal (HPT's SFT
fraction, Clip-Cov / KL-Cov covariance, a critic's value loss and explained variance, DPO's
margin and chosen/rejected log-likelihood), entropy, response length (these even when flat: a
reward stuck at 0 is news); then every other varying metric alphabetically. Other metrics that
never change (epoch, a constant lr, skipped_steps all zero) get no panel: they are listed at the
bottom. Timings (`time/*`) are left out unless nothing else was logged; a series identical to
one drawn is drawn once.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELDOUT_PASS_AT_K = r"heldout/pass@\d+"
"""The held-out pass@k keys (`online.heldout.samples`), drawn in one panel."""

LEADING: tuple[tuple[str, str], ...] = (
    (r"^heldout/accuracy$", "Held-out accuracy"),
    (f"^{HELDOUT_PASS_AT_K}$", "Held-out pass@k (sampled)"),
    (r"(^|/)reward_mean$", "Reward (mean)"),
    (r"^eval/", ""),
    (r"^rollout/accuracy$", "Rollout accuracy"),
    (r"(^|/)accuracy$", "Preference accuracy (implicit reward)"),
    (r"^loss$", "Loss"),
    (r"^hpt/sft_frac$", "HPT: fraction of prompts trained by SFT"),
    (r"(^|/)(cov_mean|token_covariance)$", "Covariance (Clip-Cov / KL-Cov)"),
    (r"(^|/)(cov_dropped|kl_cov_selected|clipfrac)$", ""),
    (r"^critic/value_loss$", "Critic: value loss"),
    (r"^critic/explained_variance$", "Critic: explained variance of the returns"),
    (r"(^|/)margin$", "Margin (chosen − rejected implicit reward)"),
    (r"(^|/)chosen_logp$", "Log-likelihood: chosen vs rejected"),
    (r"(^|/)chosen_reward$", "Implicit reward: chosen vs rejected"),
    (r"(^|/)entropy(/mean)?$", "Entropy"),
    (r"(^|/)response_length$", "Response length (tokens)"),
)
"""(pattern, panel title) in the order panels are drawn; '' titles the panel by its key."""


@dataclass
class Panel:
    title: str
    keys: list[str]
    """One line per key (chosen and rejected share a panel)."""


def numeric_keys(records: list[dict[str, Any]]) -> list[str]:
    keys = {k for r in records for k, v in r.items() if k != "step" and _is_number(v)}
    timing = {k for k in keys if k.startswith("time/")}
    return sorted(keys - timing or keys)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def constants(records: list[dict[str, Any]], keys: list[str]) -> dict[str, float]:
    """Keys whose every logged value is the same (finite) number."""
    out = {}
    for key in keys:
        values = {float(r[key]) for r in records if _is_number(r.get(key))}
        if len(values) == 1 and math.isfinite(next(iter(values))):
            out[key] = next(iter(values))
    return out


def _rank(key: str) -> tuple[int, str]:
    for index, (pattern, _) in enumerate(LEADING):
        if re.search(pattern, key):
            return index, key
    return len(LEADING), key


def _title(key: str) -> str:
    """The pattern's title; one matched by a suffix names the key's prefix too (held-out and
    rollout response lengths are two panels)."""
    for pattern, title in LEADING:
        match = re.search(pattern, key)
        if match:
            prefix = key[: match.start()].strip("/")
            return f"{title} · {prefix}" if title and prefix else title or key
    return key


def dashboard_panels(records: list[dict[str, Any]]) -> tuple[list[Panel], dict[str, float]]:
    """The panels in drawing order, and the constant metrics left out of them."""
    keys = numeric_keys(records)
    watched = {k for k in keys if _rank(k)[0] < len(LEADING)}  # plotted even when flat
    fixed = constants(records, sorted(set(keys) - watched)) if len(records) > 1 else {}
    varying = sorted((k for k in keys if k not in fixed), key=_rank)
    panels: list[Panel] = []
    placed: set[str] = set()
    for key in varying:
        if key in placed or (key not in watched and _duplicates(records, key, placed)):
            continue
        group = [key, *companions(key, varying)]
        placed.update(group)
        panels.append(Panel(_title(key), group))
    return panels, fixed


def companions(key: str, varying: list[str]) -> list[str]:
    """The keys drawn in ``key``'s panel besides it: chosen with rejected, every held-out
    pass@k together (by k)."""
    if "chosen_" in key:
        partner = key.replace("chosen_", "rejected_")
        return [partner] if partner in varying else []
    if re.fullmatch(HELDOUT_PASS_AT_K, key):
        others = [k for k in varying if re.fullmatch(HELDOUT_PASS_AT_K, k) and k != key]
        return sorted(others, key=lambda k: int(k.rsplit("@", 1)[1]))
    return []


def _series(records: list[dict[str, Any]], key: str) -> list[tuple[Any, Any]]:
    return [(r["step"], r[key]) for r in records if _is_number(r.get(key))]


def _duplicates(records: list[dict[str, Any]], key: str, placed: set[str]) -> bool:
    """A series identical to one already drawn (a single-term `dpo/loss` next to `loss`)."""
    series = _series(records, key)
    return any(_series(records, other) == series for other in placed)


def plotted_rows(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The complete rows of a metrics.jsonl, and a note when its last line was cut short (a run
    killed mid-write). A bad line before the last, or no rows to plot, is a ValueError naming
    the file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    records: list[dict[str, Any]] = []
    note = None
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and _is_number(record.get("step")):
            records.append(record)
        elif record is None and index == len(lines) - 1:
            note = f"note: {path} line {number} is cut short (the run stopped mid-write?); "
            note += f"plotting the rows before it ({len(records)})"
        else:
            raise ValueError(
                f"{path} line {number}: expected a JSON object with a numeric 'step', got "
                f"{line[:60]!r}; fix or delete that line"
            )
    if not records:
        raise ValueError(f"{path} has no complete rows; nothing to plot")
    if not numeric_keys(records):
        raise ValueError(f"{path} has rows but no numeric metrics; nothing to plot")
    return records, note


def _format(value: float) -> str:
    return f"{value:.4g}"


def draw(records: list[dict[str, Any]], title: str, target: Path) -> Path:
    """Render the dashboard of ``records`` into ``target`` (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels, fixed = dashboard_panels(records)
    columns = 3 if len(panels) > 4 else max(1, min(2, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 2.9 * rows + 0.8), squeeze=False
    )
    for ax, panel in zip(axes.flat, panels, strict=False):
        for key in panel.keys:
            points = _series(records, key)
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="." if len(points) < 30 else None,
                label=key,
            )
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(panel.keys[0] if len(panel.keys) == 1 else "value", fontsize=8)
        if len(panel.keys) > 1:
            ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    if fixed:
        shown = ", ".join(f"{k}={_format(v)}" for k, v in sorted(fixed.items()))
        fig.text(0.5, 0.005, f"constant over the run: {shown}", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03 if fixed else 0, 1, 0.97))
    fig.savefig(target, dpi=90)
    plt.close(fig)
    return target
