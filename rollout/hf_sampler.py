"""Next-token choice for `HFEngine`: draws each row's token and records its log-probability from
the same scores, in the engine's decode loop or as a `model.generate` logits processor.

Why not `torch.multinomial` (generate's `do_sample=True`): it draws V exponentials per row and
step (about 30 ms for 32 rows of a 49k vocabulary on one CPU core, more than the softmax,
log-softmax and argmax together). Inverse-CDF sampling needs one uniform per row; the
cumulative sums are taken in float64 in two levels (over blocks of 256 tokens, then inside the
chosen block), so even tail tokens keep their probability, which one float32 cumulative sum
over the whole vocabulary would round away (its steps are ~6e-8 wide near 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.generation.logits_process import (
    LogitsProcessor,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from alignlib.rollout.base import SamplingParams

BLOCK = 256
"""Tokens per block of the two-level cumulative sum."""


def warpers(sampling: SamplingParams) -> list[LogitsProcessor]:
    """Temperature, then min-p, top-k, top-p: transformers' own warpers in vLLM's order (so
    both engines keep the same tokens; transformers' `generate` puts min-p last)."""
    chosen: list[LogitsProcessor] = []
    if sampling.temperature != 1.0:
        chosen.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.min_p > 0:
        chosen.append(MinPLogitsWarper(min_p=sampling.min_p))
    if sampling.top_k > 0:
        chosen.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        chosen.append(TopPLogitsWarper(top_p=sampling.top_p))
    return chosen


def sample_rows(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row of `probs` [B, V] (non-negative, rows need not sum to 1), drawn with
    probability proportional to its entry by inverting the cumulative sum at `uniforms` [B]
    (float64 in [0, 1)); an entry of 0 is never drawn. Returns [B] long.
    """
    rows, vocab = probs.shape
    blocks = -(-vocab // BLOCK)
    padded = F.pad(probs, (0, blocks * BLOCK - vocab)) if vocab % BLOCK else probs
    padded = padded.view(rows, blocks, BLOCK)
    # Block masses are summed in the input dtype (relative error ~1e-7 of each block's mass,
    # converting all of [B, V] to float64 would cost more than the rest of the draw).
    block_cdf = padded.sum(-1).double().cumsum(-1)  # [B, blocks]
    draw = uniforms[:, None].double() * block_cdf[:, -1:]
    block = _first_above(block_cdf, draw)  # [B, 1]
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    inner = padded.gather(1, block[:, :, None].expand(-1, 1, BLOCK))[:, 0]
    inner_cdf = inner.cumsum(-1, dtype=torch.float64)  # [B, BLOCK]
    return (block * BLOCK + _first_above(inner_cdf, draw - before))[:, 0]


def _first_above(cdf: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """[B, 1] first index whose cumulative sum exceeds `value` [B, 1]: a zero-width entry never
    qualifies. Rounding can put `value` at or past the total; then the last entry with positive
    width is taken (the one that reaches the total), never a zero entry after it."""
    index = torch.searchsorted(cdf, value, right=True)
    last_positive = (cdf < cdf[:, -1:]).sum(-1, keepdim=True)
    return torch.minimum(index, last_positive)


class TokenSampler(LogitsProcessor):
    """Chooses every row's next token and its log π(token) from the same scores.

    Sampled rows draw from `softmax(warped scores)` with `sample_rows`, greedy rows take the
    argmax. The log-probability is the `log_softmax` of the warped scores ("processed") or of
    the scores as they came in ("raw"): the convention of `alignlib.rollout.base`. Used by the
    engine's own decode loop through `choose`, or as the last logits processor of
    `model.generate(do_sample=False)`: then it returns scores that are -inf everywhere but 0 at
    the chosen token (generate's argmax picks exactly it) and keeps [B] log-probs per step,
    never [B, V] scores. Both ways draw one uniform per row and step from the global torch RNG.
    """

    def __init__(self, sampling: SamplingParams) -> None:
        self.warpers = [] if sampling.greedy else warpers(sampling)
        self.greedy = sampling.greedy
        self.raw = sampling.logprobs_mode == "raw"
        self.steps: list[torch.Tensor] = []

    def uniforms(self, rows: int, device: torch.device) -> torch.Tensor | None:
        """This step's [rows] float64 uniforms (None when greedy: nothing is drawn)."""
        return None if self.greedy else torch.rand(rows, dtype=torch.float64, device=device)

    def choose(
        self, input_ids: torch.Tensor, scores: torch.Tensor, uniforms: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] tokens and [B] log-probs for scores [B, V] after input_ids [B, L]."""
        # At least float32 (bf16 logits are widened); a float64 model keeps float64.
        scores = scores if scores.dtype == torch.float64 else scores.float()
        warped = scores
        for warper in self.warpers:
            warped = warper(input_ids, warped)
        logprobs = torch.log_softmax(warped, dim=-1)
        greedy = uniforms is None
        tokens = warped.argmax(-1) if greedy else sample_rows(logprobs.exp(), uniforms)
        if self.raw and self.warpers:
            logprobs = torch.log_softmax(scores, dim=-1)
        return tokens, logprobs.gather(1, tokens[:, None])[:, 0]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens, logprobs = self.choose(
            input_ids, scores, self.uniforms(scores.shape[0], scores.device)
        )
        self.steps.append(logprobs)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None], 0.0)

    def logprobs(self) -> torch.Tensor:
        """[B, steps] log-probs of the tokens chosen as a generate processor."""
        return torch.stack(self.steps, dim=1)
