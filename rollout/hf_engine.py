"""Rollout engine on plain transformers: batched, left-padded decoding with a KV cache.

Each distinct prompt is prefilled once and its KV cache copied to its `n` samples; the decode
loop (`hf_decode`) drops rows as they finish; the token and its log-probability come from the
same scores (`hf_sampler`), with no second pass. `model.generate` is the fallback for caches
that cannot be copied by row. Slow next to vLLM, but needs nothing beyond transformers and runs
anywhere (CPU included). The engine can share the policy module object itself (no copy, no
weight sync needed) or own a separate copy that `update_weights` refreshes.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteriaList, StopStringCriteria

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
from alignlib.rollout.hf_decode import decode
from alignlib.rollout.hf_sampler import TokenSampler

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


try:  # the per-layer cache classes exist from transformers 4.56 on
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    _COPYABLE_LAYERS: tuple[type, ...] = (DynamicLayer, DynamicSlidingWindowLayer)
except ImportError:  # pragma: no cover - older transformers: always `model.generate`
    _COPYABLE_LAYERS = ()


@register_engine("transformers")
class HFEngine(RolloutEngine):
    """Generate with transformers models; see `alignlib.rollout.base` for the logprob convention.

    Args:
        model: A causal LM. Shared, not copied: pass the policy module itself to skip weight
            syncing, or a separate copy and call `update_weights` after each optimiser step.
        tokenizer: Its tokenizer. A missing pad token falls back to EOS (pad positions are
            masked and stripped, so the choice does not affect results).
        max_batch_size: Most sequences (prompts x n) decoded together; bounds memory.
            Sampled outputs depend on it (each micro-batch draws its own seeded stream).
        apply_chat_template: Wrap string prompts as one user turn with the tokenizer's chat
            template (when it has one). Token-id prompts are always used verbatim.
        autocast_dtype: Generate under `torch.autocast` to this dtype (bf16 compute for a
            model kept in fp32 master weights); None runs in the parameters' dtype.
        use_generate: Decode with `model.generate` over every row, each prefilling its own
            copy of the prompt and staying in the batch until the longest row ends. By default
            each distinct prompt is prefilled once, its KV cache copied to its `n` samples,
            and finished rows leave the batch (`hf_decode`); the outputs are the same up to
            float rounding (same seed, same draws). Models whose cache cannot be copied by row
            always use `model.generate`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 16,
        apply_chat_template: bool = True,
        autocast_dtype: torch.dtype | None = None,
        use_generate: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"HFEngine: max_batch_size={max_batch_size} must be >= 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.apply_chat_template = apply_chat_template
        self.autocast_dtype = autocast_dtype
        # peft prompt learning (prefix/prompt tuning) writes virtual tokens into the cache itself.
        peft_config = getattr(model, "active_peft_config", None)
        self.use_generate = use_generate or getattr(peft_config, "is_prompt_learning", False)
        self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}
        # transformers 5 calls the KV cache `cache`, 4.x `past_key_values` (in and out).
        forward = inspect.signature(_unwrapped(model).forward).parameters
        self._cache_key = "cache" if "cache" in forward else "past_key_values"
        self._keeps_logits = "logits_to_keep" in forward
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
                # Rows come grouped by prompt, so a chunk holds runs of samples of a few prompts.
                distinct = sorted({i for i, _ in chunk})
                owner = [distinct.index(i) for i, _ in chunk]
                batch = [prompt_ids[i] for i in distinct]
                gens = self._generate_batch(batch, owner, sampling, chunk_index)
                for (i, s), gen in zip(chunk, gens, strict=True):
                    gen.prompt_index, gen.sample_index = i, s
                    results[i].append(gen)
        finally:
            self.model.train(was_training)
        return results

    def _generate_batch(
        self, prompts: list[list[int]], owner: list[int], sampling: SamplingParams, chunk_index: int
    ) -> list[Generation]:
        """Generations of one micro-batch, in which row r continues `prompts[owner[r]]`."""
        device = self.model.device
        width = max(len(ids) for ids in prompts)
        # Left padding so every row's last prompt token sits at the same position for decoding.
        input_ids = torch.tensor(
            [[self.pad_token_id] * (width - len(ids)) + ids for ids in prompts], device=device
        )
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device
        )
        rows = torch.tensor(owner, device=device)
        sampler = TokenSampler(sampling)
        autocast = torch.autocast(
            device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )
        with torch.no_grad(), autocast:
            cache = None
            if not self.use_generate and width > 1:
                cache = self._prefill(input_ids, attention_mask, rows)
            input_ids, attention_mask = input_ids[rows], attention_mask[rows]
            with _seeded(sampling.seed, chunk_index, device):
                if cache is None:
                    completions, logprobs = self._generate(
                        input_ids, attention_mask, sampler, sampling
                    )
                else:
                    stop = self._stop_criterion(sampling.stop)
                    completions, logprobs = decode(
                        self.model,
                        cache,
                        self._cache_key,
                        input_ids,
                        attention_mask,
                        sampler,
                        sampling.max_new_tokens,
                        self.eos_token_ids,
                        stop,
                        self.pad_token_id,
                    )
        return [
            self._finish(prompts[k], completions[r].tolist(), logprobs[r].tolist(), sampling)
            for r, k in enumerate(owner)
        ]

    def _prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor
    ) -> Any:
        """KV cache of every prompt column but the last, computed once per distinct prompt and
        copied to each of its rows (the last column is the decode loop's first input).

        input_ids, attention_mask: [P, W] left-padded distinct prompts; rows: [R] the prompt of
        each row. Returns the [R, ..., W-1, ...] cache, or None when the model's cache cannot
        be copied by row (then `model.generate` prefills every row itself; only the type of
        cache the model builds tells, so for such models the first micro-batch's prefill is
        spent for nothing and the engine switches to `use_generate`).
        """
        head = attention_mask[:, :-1]
        # Positions exactly as `generate` derives them from a left-padded mask.
        positions = (head.cumsum(-1) - 1).masked_fill(head == 0, 0)
        extra = {"logits_to_keep": 1} if self._keeps_logits else {}  # the logits are unused
        out = self.model(
            input_ids=input_ids[:, :-1],
            attention_mask=head,
            position_ids=positions,
            use_cache=True,
            **extra,
        )
        cache = out.get(self._cache_key)
        if not _row_copyable(cache):
            self.use_generate = True  # a model's cache type is fixed: skip this prefill from now on
            return None
        cache.batch_select_indices(rows)  # [P, ...] -> [R, ...]: each row gets its prompt's copy
        return cache

    def _generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        sampler: TokenSampler,
        sampling: SamplingParams,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[R, T] completions and log-probs from `model.generate` over all R rows."""
        # The sampler draws the token itself, so generate runs greedy over its output: no
        # sampling flag of a checkpoint's generation_config can reshape the distribution.
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids,
            "do_sample": False,
            "logits_processor": LogitsProcessorList([sampler]),
            **_NEUTRAL_PROCESSING,
        }
        stop = self._stop_criterion(sampling.stop)
        if stop is not None:  # the cached check: `stop_strings=` would rebuild it every call
            kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
        sequences = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, **kwargs
        )
        return sequences[:, input_ids.shape[1] :], sampler.logprobs()

    def _stop_criterion(self, stop: tuple[str, ...]) -> StopStringCriteria | None:
        """The stop-string check for `stop`, built once per tuple (it scans the vocabulary)."""
        stops = tuple(text for text in stop if text)
        if not stops:
            return None
        if stops not in self._stop_criteria:
            self._stop_criteria[stops] = StopStringCriteria(self.tokenizer, list(stops))
        return self._stop_criteria[stops]

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


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (whose forward takes **kwargs)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _row_copyable(cache: object) -> bool:
    """Whether `cache.batch_select_indices` copies every layer by row: plain and sliding-window
    attention layers do; recurrent or static layers, or a legacy tuple cache, are not handled."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers:
        return False
    return all(type(layer) in _COPYABLE_LAYERS for layer in layers)


def _as_list(x: int | Sequence[int] | None) -> list[int]:
    if x is None:
        return []
    return [x] if isinstance(x, int) else list(x)


def _stop_cut(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
