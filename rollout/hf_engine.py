"""Rollout engine on plain transformers: batched, left-padded `model.generate` with a KV cache.

Slow next to vLLM, but needs nothing beyond transformers and runs anywhere (CPU included). The
engine can share the policy module object itself (no copy, no weight sync needed) or own a
separate copy that `update_weights` refreshes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from alignlib.rollout.base import (
    FinishReason,
    Generation,
    NamedTensors,
    Prompts,
    RolloutEngine,
    SamplingParams,
    encode_prompts,
    register_engine,
)

# Generation-config fields that would silently reshape the sampling distribution if a checkpoint's
# generation_config.json set them; pinned to neutral values so logprobs match the documented
# convention. (Unset fields inherit from model.generation_config, so "None" cannot express "off".)
_NEUTRAL_PROCESSING = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_length": 0,
}


@register_engine("transformers")
class HFEngine(RolloutEngine):
    """Generate with `model.generate`; see `alignlib.rollout.base` for the logprob convention.

    Args:
        model: A causal LM. Shared, not copied: pass the policy module itself to skip weight
            syncing, or a separate copy and call `update_weights` after each optimiser step.
        tokenizer: Its tokenizer. A missing pad token falls back to EOS (pad positions are
            masked and stripped, so the choice does not affect results).
        max_batch_size: Most sequences (prompts x n) per `model.generate` call; bounds memory.
            Sampled outputs depend on it (each micro-batch draws its own seeded stream).
        apply_chat_template: Wrap string prompts as one user turn with the tokenizer's chat
            template (when it has one). Token-id prompts are always used verbatim.
        autocast_dtype: Generate under `torch.autocast` to this dtype (bf16 compute for a
            model kept in fp32 master weights); None runs in the parameters' dtype.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 16,
        apply_chat_template: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"HFEngine: max_batch_size={max_batch_size} must be >= 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.apply_chat_template = apply_chat_template
        self.autocast_dtype = autocast_dtype
        eos = _as_list(model.generation_config.eos_token_id) + _as_list(tokenizer.eos_token_id)
        if not eos:
            raise ValueError(
                "HFEngine: neither model.generation_config nor the tokenizer defines an EOS token; "
                "set tokenizer.eos_token or model.generation_config.eos_token_id."
            )
        self.eos_token_ids: list[int] = sorted(set(eos))
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else self.eos_token_ids[0]

    def encode_prompts(self, prompts: Prompts) -> list[list[int]]:
        """Turn prompts into token-id lists exactly as `generate` will feed them."""
        return encode_prompts(
            self.tokenizer,
            prompts,
            apply_chat_template=self.apply_chat_template,
            vocab_size=self.model.get_input_embeddings().num_embeddings,
            where="HFEngine.generate",
        )

    # -------------------------------------------------------------------------------- generation
    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        """Return `sampling.n` generations per prompt, in prompt order."""
        prompt_ids = self.encode_prompts(prompts)
        rows = [(i, s) for i in range(len(prompt_ids)) for s in range(sampling.n)]
        results: list[list[Generation]] = [[] for _ in prompt_ids]
        was_training = self.model.training
        self.model.eval()  # dropout off while sampling, even when sharing the training module
        try:
            for chunk_index, start in enumerate(range(0, len(rows), self.max_batch_size)):
                chunk = rows[start : start + self.max_batch_size]
                batch = [prompt_ids[i] for i, _ in chunk]
                for (i, s), gen in zip(
                    chunk, self._generate_batch(batch, sampling, chunk_index), strict=True
                ):
                    gen.prompt_index, gen.sample_index = i, s
                    results[i].append(gen)
        finally:
            self.model.train(was_training)
        return results

    def _generate_batch(
        self, batch: list[list[int]], sampling: SamplingParams, chunk_index: int
    ) -> list[Generation]:
        device = self.model.device
        width = max(len(ids) for ids in batch)
        # Left padding so every row's last prompt token sits at the same position for decoding.
        input_ids = torch.tensor(
            [[self.pad_token_id] * (width - len(ids)) + ids for ids in batch], device=device
        )
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device
        )
        # The warpers are passed as our own processor list, with transformers' own sampling
        # warpers switched off (temperature 1, top_k 0, top_p 1): that is the only way to place
        # the recorder after them (custom processors otherwise run before the warpers).
        warpers = [] if sampling.greedy else _warpers(sampling)
        recorder = _LogprobRecorder()
        order = [recorder, *warpers] if sampling.logprobs_mode == "raw" else [*warpers, recorder]
        kwargs: dict[str, object] = {
            "max_new_tokens": sampling.max_new_tokens,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids,
            "do_sample": not sampling.greedy,
            "logits_processor": LogitsProcessorList(order),
            **_NEUTRAL_PROCESSING,
        }
        if not sampling.greedy:
            # Only when sampling: greedy decoding uses no warper, and a sampling flag passed
            # with do_sample=False makes transformers warn "generation flags are not valid".
            # top_k 0 disables it (passing it overrides transformers' default 50).
            kwargs.update(temperature=1.0, top_k=0, top_p=1.0)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)

        autocast = torch.autocast(
            device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )
        with torch.no_grad(), _seeded(sampling.seed, chunk_index, device), autocast:
            sequences = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **kwargs
            )
        completions = sequences[:, width:]
        logprobs = recorder.finish(completions)
        return [
            self._finish(batch[r], completions[r].tolist(), logprobs[r].tolist(), sampling)
            for r in range(len(batch))
        ]

    def _finish(
        self, prompt: list[int], tokens: list[int], logprobs: list[float], sampling: SamplingParams
    ) -> Generation:
        """Cut a padded completion at EOS / stop string and decide its finish reason."""
        reason: FinishReason = "length"
        eos_at = next((t for t, tok in enumerate(tokens) if tok in self.eos_token_ids), None)
        if eos_at is not None:
            tokens, reason = tokens[: eos_at + 1], "stop"  # keep EOS: the policy must learn to stop
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = _stop_cut(text, sampling.stop)
        if cut is not None:
            # Shortest token prefix whose text contains the stop string (prefix text only grows).
            needed = cut + min(len(s) for s in sampling.stop if s and text.startswith(s, cut))
            lo, hi = 1, len(tokens)
            while lo < hi:
                mid = (lo + hi) // 2
                if len(self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)) >= needed:
                    hi = mid
                else:
                    lo = mid + 1
            tokens, text, reason = tokens[:lo], text[:cut], "stop"
        return Generation(
            prompt_index=-1,
            prompt_ids=list(prompt),
            token_ids=tokens,
            text=text,
            logprobs=logprobs[: len(tokens)],
            finish_reason=reason,
        )

    # ----------------------------------------------------------------------------------- weights
    def update_weights(self, weights: NamedTensors) -> None:
        """Copy new values into the model's parameters/buffers (all or a subset, by name)."""
        named = dict(weights.items() if isinstance(weights, Mapping) else weights)
        known = self.model.state_dict()
        unknown = sorted(set(named) - set(known))
        if unknown:
            raise KeyError(
                f"HFEngine.update_weights: {len(unknown)} names not in the model, e.g. "
                f"{unknown[:3]}; pass names from model.state_dict() (strip wrapper prefixes)."
            )
        for name, tensor in named.items():
            if tensor.shape != known[name].shape:
                raise ValueError(
                    f"HFEngine.update_weights: {name} has shape {tuple(tensor.shape)}, model "
                    f"expects {tuple(known[name].shape)}; the weights belong to another model."
                )
        # strict=False: partial updates (e.g. only trained parameters) are allowed.
        self.model.load_state_dict(named, strict=False)


def _warpers(sampling: SamplingParams) -> list[LogitsProcessor]:
    """Temperature, then top-k, then top-p: transformers' own warpers in its own order."""
    warpers: list[LogitsProcessor] = []
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
    return warpers


class _LogprobRecorder(LogitsProcessor):
    """Records log π(token) for each sampled token without keeping per-step [B, V] scores.

    Called once per decoding step with the scores the next token is drawn from; that token is only
    known at the next call (the last of `input_ids`), so one step's log-softmax is held until
    then. (`output_scores` would instead keep every step's [B, V] scores: gigabytes for a long
    batch of a 50k-vocabulary model.)
    """

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.pending is not None:
            self.logprobs.append(self.pending.gather(1, input_ids[:, -1:])[:, 0])
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, completions: torch.Tensor) -> torch.Tensor:
        """[B, steps] log-probs of `completions` (the generated part of the sequences)."""
        if self.pending is not None:
            last = completions[:, len(self.logprobs) : len(self.logprobs) + 1]
            self.logprobs.append(self.pending.gather(1, last)[:, 0])
            self.pending = None
        return torch.stack(self.logprobs, dim=1)


@contextlib.contextmanager
def _seeded(seed: int | None, chunk_index: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for one micro-batch, restoring the caller's RNG state afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # hash() of an int tuple is stable across processes (no hash randomisation for ints).
        torch.manual_seed(hash((seed, chunk_index)) & 0x7FFF_FFFF_FFFF_FFFF)
        yield


def _as_list(x: int | Sequence[int] | None) -> list[int]:
    if x is None:
        return []
    return [x] if isinstance(x, int) else list(x)


def _stop_cut(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
