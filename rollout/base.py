"""Engine-independent rollout types: sampling parameters, generations, the engine interface.

Logprob convention (identical for every engine):
    `Generation.logprobs[i]` is the log-probability of `token_ids[i]` under the distribution the
    token was actually sampled from, i.e. `log_softmax(processed_logits)` where processing is
    temperature scaling followed by top-k then top-p truncation (truncated tokens get -inf and the
    rest renormalise). With top_k/top_p disabled this is exactly
    `log_softmax(logits / temperature)`. Greedy decoding (temperature == 0) uses temperature 1,
    so greedy logprobs are the raw model `log_softmax(logits)`. This matches vLLM's
    `logprobs_mode="processed_logprobs"`, which is what makes the numbers usable as
    behaviour-policy log-probabilities in importance ratios.
    `SamplingParams.logprobs_mode="raw"` instead returns `log_softmax(logits)` (no temperature,
    no truncation), vLLM's default `"raw_logprobs"`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch

if TYPE_CHECKING:  # keeps `import alignlib.rollout.base` free of the transformers import cost
    from transformers import PreTrainedTokenizerBase

Prompt: TypeAlias = str | Sequence[int]
"""One prompt: text (the engine applies its chat template) or token ids."""
Prompts: TypeAlias = Sequence[str] | Sequence[Sequence[int]]
"""Either text prompts or already-tokenised prompts (lists of token ids); not mixed."""

NamedTensors: TypeAlias = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
"""A state dict, or an iterable of `(parameter_name, tensor)` pairs (e.g. `named_parameters()`)."""

FinishReason: TypeAlias = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions. Defaults give plain ancestral sampling at temperature 1."""

    n: int = 1
    """Completions per prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding (then top_k/top_p/seed are ignored)."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables it."""
    min_p: float = 0.0
    """Drop the tokens less likely than min_p × the most likely one's probability; 0 disables
    it. Applied after the temperature and before top-k / top-p, in vLLM's order (transformers'
    own `generate` applies it last; with top-p the kept tokens can differ)."""
    max_new_tokens: int = 128
    """Completion length cap; a completion that hits it finishes with reason "length"."""
    seed: int | None = None
    """Seed for reproducible sampling. Results are reproducible for a fixed seed *and* a fixed
    batching (engine `max_batch_size`, number of Ray workers); None draws fresh randomness."""
    stop: tuple[str, ...] = ()
    """Stop strings. Text is cut before the first match (the string is not included); token_ids
    keep the tokens up to and including the one that completed the match."""
    logprobs_mode: Literal["processed", "raw"] = "processed"
    """Which distribution `Generation.logprobs` refers to; see the module docstring."""

    def __post_init__(self) -> None:
        checks = [
            (self.n >= 1, f"n={self.n} must be >= 1"),
            (self.temperature >= 0, f"temperature={self.temperature} must be >= 0"),
            (0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]"),
            (self.top_k >= 0, f"top_k={self.top_k} must be >= 0 (0 disables it)"),
            (0 <= self.min_p <= 1, f"min_p={self.min_p} must be in [0, 1] (0 disables it)"),
            (self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens} must be >= 1"),
            (self.logprobs_mode in ("processed", "raw"), "logprobs_mode must be processed|raw"),
            (not isinstance(self.stop, str), "stop must be a tuple of strings, not one string"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SamplingParams: {msg}.")
        # Accept lists for convenience but store a tuple so the dataclass stays hashable.
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax."""
        return self.temperature == 0


@dataclass
class Generation:
    """One completion of one prompt."""

    prompt_index: int
    """Position of the prompt in the list passed to `generate`."""
    prompt_ids: list[int]
    """Prompt token ids as fed to the model (after the chat template, without padding)."""
    token_ids: list[int]
    """Completion token ids; includes the final EOS token when finish_reason is "stop" by EOS."""
    text: str
    """Decoded completion without special tokens, cut before any stop string."""
    logprobs: list[float]
    """One log-probability per entry of `token_ids`; convention in the module docstring."""
    finish_reason: FinishReason
    """"stop" (EOS or stop string) or "length" (hit max_new_tokens)."""
    sample_index: int = 0
    """Which of the `n` samples of this prompt this is."""
    loss_mask: list[int] | None = None
    """Multi-turn episodes (`alignlib.rollout.environment`): 1 for each entry of `token_ids` the
    policy sampled, 0 for tokens an environment inserted (their `logprobs` entries are 0 and
    they are never trained on). None: every token was sampled (one turn)."""
    turns: int = 1
    """Model turns in this completion (more than 1 only in multi-turn episodes)."""
    environment_reward: float | None = None
    """The environment's own reward for the episode (its `get_reward()` plus its turn rewards),
    or None."""
    turn_rewards: list[float] | None = None
    """Per entry of `token_ids`, the reward an environment's `step` gave for a turn, on that
    turn's last sampled token, 0 elsewhere (included in `environment_reward`); None: no step
    gave one."""
    turn_ends: list[int] | None = None
    """The entries of `token_ids` a turn reward sits on, in order (one of 0 included: a turn
    rewarded 0 is still a step); None when `turn_rewards` is."""
    environment: Any = field(default=None, repr=False, compare=False)
    """The episode's environment instance (the user's object), for TRL rewards that read
    `environments`; None for one-turn completions. Lives in the process that ran the episode."""


RolloutOutput = Generation
"""Alias: some callers think of a generation as one rollout output."""


class RolloutEngine(ABC):
    """Generates completions and accepts new policy weights. Knows nothing of training."""

    @abstractmethod
    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        """Return `sampling.n` generations for every prompt, outer list in prompt order."""

    @abstractmethod
    def update_weights(self, weights: NamedTensors) -> None:
        """Load new weights (a state dict or `(name, tensor)` pairs, possibly a subset)."""

    def load_adapter(self, path: str) -> None:
        """Generate with the PEFT LoRA adapter saved in folder `path` from now on (replacing any
        earlier one). Engines that cannot apply adapters refuse (a setting the user changes, so
        a ValueError: the CLI prints it as one line); send merged weights instead."""
        raise ValueError(
            f"{type(self).__name__} does not apply LoRA adapters; send the merged weights with "
            "update_weights (rollout.vllm.lora_sync: merged)."
        )

    def sleep(self) -> None:  # noqa: B027 - optional hook
        """Free generation memory (KV cache, and weights where the engine can reload them)
        while the trainer uses the device; `wake_up` restores it. Default: nothing to free."""

    def wake_up(self) -> None:  # noqa: B027 - optional hook
        """Undo `sleep` before the next weight update or generation. Default: nothing."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook, most engines own nothing to free
        """Release resources (processes, GPU memory). Default: nothing to do."""


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    *,
    apply_chat_template: bool,
    vocab_size: int,
    where: str,
) -> list[list[int]]:
    """Tokenise prompts the same way for every engine.

    Strings become one user turn under the tokenizer's chat template (if `apply_chat_template`
    and the tokenizer has one; otherwise plain `encode`). Token-id lists are checked and copied.
    """
    if all(isinstance(p, str) for p in prompts):
        out = [_encode_text(tokenizer, p, apply_chat_template) for p in prompts]  # type: ignore[arg-type]
    else:
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, str) or not all(isinstance(t, int) and 0 <= t < vocab_size for t in p):
                raise ValueError(
                    f"{where}: prompt {i} is not a list of token ids in [0, {vocab_size}); "
                    "pass either all strings or all token-id lists."
                )
            out.append(list(p))
    for i, ids in enumerate(out):
        if not ids:
            raise ValueError(f"{where}: prompt {i} is empty after tokenisation; drop it.")
    return out


def _encode_text(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> list[int]:
    if chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        # The template already carries BOS/role markers; adding special tokens would double them.
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(prompt)


_ENGINES: dict[str, Callable[..., RolloutEngine]] = {}


def register_engine(
    name: str,
) -> Callable[[Callable[..., RolloutEngine]], Callable[..., RolloutEngine]]:
    """Class/factory decorator that makes an engine constructible via `create_engine(name, ...)`."""

    def deco(factory: Callable[..., RolloutEngine]) -> Callable[..., RolloutEngine]:
        _ENGINES[name] = factory
        return factory

    return deco


def available_engines() -> list[str]:
    """Names accepted by `create_engine`."""
    _load_builtin_engines()
    return sorted(_ENGINES)


def create_engine(name: str, *args: object, **kwargs: object) -> RolloutEngine:
    """Build a registered engine by name, e.g. `create_engine("transformers", model, tok)`."""
    _load_builtin_engines()
    if name not in _ENGINES:
        raise ValueError(
            f"rollout.engine: unknown engine {name!r}; valid names: {', '.join(sorted(_ENGINES))}."
        )
    return _ENGINES[name](*args, **kwargs)


def _load_builtin_engines() -> None:
    # Imported lazily: the modules register themselves, and vllm_engine only imports vLLM when an
    # engine is actually built, so listing names never needs vLLM installed.
    from alignlib.rollout import hf_engine, vllm_engine  # noqa: F401
