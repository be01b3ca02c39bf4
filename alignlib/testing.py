"""Offline fixtures for tests and examples: a tiny BPE tokenizer and tiny random causal LMs.

Nothing here touches the network: the tokenizer is trained in-process with the `tokenizers`
library on a small embedded corpus, and the models are randomly initialised from a config.
"""

from __future__ import annotations

import functools
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from alignlib.rollout.base import Generation, NamedTensors, Prompts, RolloutEngine, SamplingParams

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|im_end|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IM_START]

# ChatML, the format SmolLM2 and Qwen use, so tests exercise the same layout as real models.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Small, but covers what the library's tests feed in: math word problems, digits, \boxed{} answers,
# chat roles. Repeated lines only shift merge priorities, so variety matters more than size.
_CORPUS = [
    "What is 12 + 30? The answer is \\boxed{42}.",
    "Solve for x: 3x + 5 = 20. Subtract 5 from both sides, then divide by 3, so x = 5.",
    "Compute the sum 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 = 55. Final answer: \\boxed{55}",
    "The product of 7 and 8 is 56, the quotient of 81 by 9 is 9, and 2^10 = 1024.",
    "If a train travels 60 miles per hour for 3 hours, the distance is 180 miles.",
    "A rectangle has length 12 and width 5, so its area is 60 and its perimeter is 34.",
    "Let me think step by step. First, add the numbers. Then multiply the result by two.",
    "system user assistant: You are a helpful assistant. Please reason step by step, "
    "and put your final answer within \\boxed{}.",
    "The square root of 144 is 12. The fraction 3/4 equals 0.75, and 15% of 200 is 30.",
    "Question: How many apples are left if Tom has 10 apples and eats 4? Answer: 6 apples.",
    "Therefore, the value of the expression is \\boxed{-3}. Hence the equation has two roots.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 50 100 1000.",
    "Hello! How can I help you today? Sure, here is a short poem about the sea.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
]


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(vocab_size: int) -> str:
    # Cached as JSON so every caller gets a fresh, independently mutable tokenizer object.
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Build a byte-level BPE tokenizer offline, with pad/bos/eos tokens and a ChatML template.

    Args:
        vocab_size: Upper bound on the vocabulary; the small corpus may yield fewer merges, so
            size models with `len(tokenizer)`, not this number. Must be > 260 (256 bytes +
            special tokens).

    Returns:
        A tokenizer that round-trips through `save_pretrained` / `AutoTokenizer.from_pretrained`.
        It adds no special tokens on `encode`; the chat template supplies the markers.
    """
    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"build_tokenizer: vocab_size={vocab_size} is too small; byte-level BPE needs "
            f"> {256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)."
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[IM_START],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    init_std: float = 0.02,
) -> LlamaForCausalLM:
    """Build a randomly initialised tiny `LlamaForCausalLM` matching `tokenizer`.

    Args:
        tokenizer: Supplies the vocabulary size and the pad/bos/eos ids.
        hidden: Hidden size; must be divisible by 4 (4 attention heads, 2 KV heads).
        layers: Number of decoder layers.
        seed: Initialisation seed; the global RNG state is left untouched.
        dtype: Parameter dtype.
        init_std: Std of the normal init. The HF default 0.02 gives near-uniform next-token
            distributions; larger values give peakier ones, which makes sampling tests sharper.
    """
    config = tiny_config(tokenizer, hidden, layers, init_std)
    # fork_rng so building a fixture never perturbs the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.to(dtype).eval()


def tiny_config(
    tokenizer: PreTrainedTokenizerFast, hidden: int = 32, layers: int = 2, init_std: float = 0.02
) -> LlamaConfig:
    """The tiny Llama shape every test model shares (4 heads, 2 KV heads, untied head)."""
    if hidden % 4:
        raise ValueError(f"tiny_config: hidden={hidden} must be divisible by 4 (4 heads).")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=init_std,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_classifier(
    tokenizer: PreTrainedTokenizerFast, head: type[PreTrainedModel], num_labels: int, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised tiny Llama under a classification head (``head``: e.g.
    ``LlamaForSequenceClassification`` for a reward model, ``LlamaForTokenClassification`` for
    a PRM) with ``num_labels`` outputs; the global RNG state is left untouched."""
    config = tiny_config(tokenizer)
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return head(config).eval()


def tiny_engine(
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    init_std: float = 0.02,
    max_batch_size: int = 8,
    crash_marker: str | None = None,
) -> RolloutEngine:
    """Build a transformers rollout engine on a tiny random model.

    Module-level on purpose: Ray workers unpickle engine factories by reference, so a factory
    must live in an importable module (test modules are not importable from a worker).

    Args:
        crash_marker: Fault injection for worker-pool tests. If set, the first `generate` call
            (across all processes) that finds this file missing creates it and kills its own
            process, as a crashing worker would; every other call works normally.
    """
    from alignlib.rollout.hf_engine import HFEngine

    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, hidden=hidden, layers=layers, seed=seed, init_std=init_std)
    engine = HFEngine(model, tokenizer, max_batch_size=max_batch_size)
    return engine if crash_marker is None else _CrashOnceEngine(engine, crash_marker)


class _CrashOnceEngine(RolloutEngine):
    def __init__(self, inner: RolloutEngine, marker: str) -> None:
        self.inner = inner
        self.marker = marker

    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        try:
            # O_EXCL: exactly one caller, across processes, wins the right to crash.
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return self.inner.generate(prompts, sampling)
        os._exit(1)  # no cleanup, no exception: what a segfault or OOM kill looks like

    def update_weights(self, weights: NamedTensors) -> None:
        self.inner.update_weights(weights)
