"""The one forward module of a micro-batch: log-probs of a policy, a reward model's scores or a
critic's values, padded or packed (FSDP2 shards it as its root unit)."""

from __future__ import annotations

from torch import Tensor, nn

from alignlib.trainer.logprobs import token_logprobs
from alignlib.trainer.packing import packed_token_logprobs
from alignlib.trainer.scores import (
    packed_sequence_scores,
    packed_token_values,
    scalar_head,
    sequence_scores,
    token_values,
)


class PolicyLogprobs(nn.Module):
    """The policy as one module whose forward is :func:`token_logprobs` (decoder, then the LM
    head in chunks), or :func:`packed_token_logprobs` when given packed ``position_ids``.
    Wrappers keyed on module forwards — FSDP2's all-gather of the embedding, final norm and LM
    head before, their gradient reduce-scatter after — then see the whole computation, which
    calls the decoder and the head separately. A one-output head gives a reward model's
    score (each row's, at its last token) or, with ``values``, a critic's V(s_t) of every
    token, in the same layout."""

    def __init__(self, model: nn.Module, values: bool = False) -> None:
        super().__init__()
        self.model = model
        self.values = values

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        chunk_size: int,
        with_entropy: bool,
        temperature: float,
        first_scored_position: int,
        position_ids: Tensor | None = None,
        scored: Tensor | None = None,
        targets: Tensor | None = None,
        **attention: object,
    ) -> tuple[Tensor, Tensor | None]:
        packed = position_ids is not None and scored is not None  # [S] values, not [B, T]
        if self.values:  # a critic: V(s_t) of each token, from the state before it
            if packed:
                return packed_token_values(
                    self.model, input_ids, position_ids, scored, **attention
                ), None
            return token_values(self.model, input_ids, attention_mask, first_scored_position), None
        if scalar_head(self.model) is not None:  # a reward model: its score at each row's end
            if packed:
                values = packed_sequence_scores(
                    self.model, input_ids, position_ids, scored, **attention
                )
                return values, None
            return sequence_scores(self.model, input_ids, attention_mask), None
        if packed:
            return packed_token_logprobs(
                self.model,
                input_ids,
                position_ids,
                scored,
                chunk_size=chunk_size,
                with_entropy=with_entropy,
                temperature=temperature,
                targets=targets,
                **attention,
            )
        return token_logprobs(
            self.model,
            input_ids,
            attention_mask,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
            temperature=temperature,
            first_scored_position=first_scored_position,
            targets=targets,
        )
