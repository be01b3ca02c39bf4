"""What a trainer asks an estimator before it builds batches: which fields its components read,
which passes it needs (present log-probs, the engine's, π_old before the update), which roles
it trains, and the critic it implies. A mixin of :class:`~alignlib.estimator.core.
UnifiedEstimator`, which only needs ``terms`` and ``value_loss``."""

from __future__ import annotations

from torch import Tensor

from alignlib.estimator.batch import ALL_ROWS, Batch, Role
from alignlib.estimator.critic import ValueLoss
from alignlib.estimator.term import PolicyGradientTerm, Term


class EstimatorQueries:
    """Read-only questions about an estimator's terms, for the trainer."""

    terms: list[Term]
    value_loss: ValueLoss | None

    def requirements(self) -> dict[str, str]:
        """Every batch field some term reads, each with the reason."""
        needs: dict[str, str] = {}
        for term in self.terms:
            for key, why in term.requirements().items():
                needs.setdefault(key, why)
        return needs

    def reads_present_logprobs(self) -> bool:
        """True when ``prepare`` reads ``batch.logprobs`` (Clip-Cov / KL-Cov token selection,
        KTO's weights): a trainer fills them with the present policy's, by a no-grad pass."""
        for term in self.terms:
            if isinstance(term, PolicyGradientTerm) and (
                term.advantage.reads_logprobs or any(m.reads_present_in_prepare for m in term.masks)
            ):
                return True
        return False

    def reads_behaviour(self) -> bool:
        """True when a component reads the sampling engine's log-probs (a rollout correction,
        off-policy sequence masking): an online trainer puts them on its own scale."""
        return any(
            isinstance(term, PolicyGradientTerm)
            and (term.correction is not None or any(m.reads_behaviour for m in term.masks))
            for term in self.terms
        )

    def distills(self) -> bool:
        """True when a term's advantage compares the policy with a teacher held in
        ``ref_logprobs`` (on-policy distillation): the run must name that teacher."""
        return any(
            isinstance(term, PolicyGradientTerm) and term.advantage.distills for term in self.terms
        )

    def needs_kl_rows(self) -> bool:
        """True when a term's advantage estimates KTO's reference point on KL rows (mismatched
        prompt/completion pairs): the data builds them only then."""
        return any(
            isinstance(term, PolicyGradientTerm) and term.advantage.needs_kl_rows
            for term in self.terms
        )

    def scores_sequences(self) -> bool:
        """True when a term's likelihood is a scalar head's score (a reward model): the
        trainer then loads a one-output sequence scorer instead of a language model."""
        return any(
            isinstance(term, PolicyGradientTerm) and term.likelihood.scalar_head
            for term in self.terms
        )

    def distinguishing_fields(self) -> frozenset[str]:
        """Row fields besides the total reward by which an advantage tells a group's rows
        apart: ``step_rewards`` (where step rewards sit: process supervision), ``reward_parts``
        (each reward's own value: GDPO normalizes them one by one), ``baseline_rewards`` (the
        greedy completion's reward: ReMax; the collector then samples one per prompt). Dynamic
        sampling keeps a group whose rows differ in any of them, even when their totals are
        equal."""
        fields: set[str] = set()
        for term in self.terms:
            if not isinstance(term, PolicyGradientTerm):
                continue
            if term.advantage.reads_steps:
                fields.add("step_rewards")
            for name in ("reward_parts", "baseline_rewards"):
                if name in term.advantage.requirements():
                    fields.add(name)
        return frozenset(fields)

    def reads_old_in_prepare(self) -> bool:
        """True when an advantage or a mask's ``prepare`` (once per mini-batch, before any
        forward) reads π_old (GAE's KL penalty in the reward, the second-moment mask): a
        trainer computes them by a no-grad pass even where the update's own forward would
        otherwise give them."""
        return any(
            isinstance(term, PolicyGradientTerm)
            and (
                "old_logprobs" in term.advantage.requirements()
                or any(mask.reads_old_in_prepare for mask in term.masks)
            )
            for term in self.terms
        )

    def critic_loss(self) -> ValueLoss | None:
        """The loss a critic trains on when a term's advantage reads its values (GAE): the
        preset's, or the defaults; None when no term needs a critic."""
        if "values" not in self.requirements():
            return None
        return self.value_loss if self.value_loss is not None else ValueLoss()

    def value_targets(self, batch: Batch) -> Tensor | None:
        """[R, T] the returns the critic regresses on, from the first term whose advantage
        comes from the critic's values; None when no term's does."""
        for term in self.terms:
            if isinstance(term, PolicyGradientTerm):
                targets = term.advantage.returns(batch, term.rows.select(batch))
                if targets is not None:
                    return targets
        return None

    def trained_roles(self) -> frozenset[Role] | None:
        """The roles some term trains on; None when a term takes every row."""
        roles: set[Role] = set()
        for term in self.terms:
            selector = getattr(term, "rows", ALL_ROWS)
            if selector.roles is None:
                return None
            roles |= selector.roles
        return frozenset(roles)
