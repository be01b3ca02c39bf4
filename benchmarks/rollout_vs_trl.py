"""Rollout generation speed, alignlib's transformers engine vs TRL 1.16's GRPOTrainer.

Same model object, same prompts, same batch shape, generation only (no training step):

    python benchmarks/rollout_vs_trl.py --model tiny:llama
    python benchmarks/rollout_vs_trl.py --model bundled:smollm2-135m-instruct --repeats 5
    python benchmarks/rollout_vs_trl.py --model bundled:smollm2-135m-instruct \
        --adapter runs/quickstart/final            # a trained LoRA: completions end early

Matched: the first `--prompts` prompts of `builtin:arithmetic_prompts` through the tokenizer's
chat template, `--n` samples each (the rows of one GRPO step: each prompt repeated n times,
one batch), at most `--max-new` new tokens, temperature 1, top-p 1, no top-k; both sides run
the same fp32 weights, with no autocast (also with `--device cuda`).
alignlib: `HFEngine.generate` (prefix-shared prefill, finished rows leave the batch, sampled
log-probs recorded on the way). TRL: `GRPOTrainer._generate_single_turn` without vLLM, i.e.
`model.generate` on the repeated prompts + EOS masking; it returns no log-probs (TRL computes
them with one more forward pass when it needs them, not timed here). Not matched: the random
streams (each side draws its own samples), so completion lengths differ a little between the
two; compare tokens/s, where a token is a completion token up to and including EOS.

Each repeat times both sides back to back (alternating which goes first), after one warm-up
call each; printed: the median over the repeats of s/call and tokens/s per side and the ratio
alignlib / TRL of tokens/s (above 1: alignlib generates faster). Set OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

DATA = "builtin:arithmetic_prompts"


def load(model_name: str, adapter: str | None, device: str) -> tuple[Any, Any]:
    """The policy as alignlib's trainer loads it (fp32; a trained LoRA adapter on top)."""
    from alignlib.config.schema import ModelConfig
    from alignlib.device import Placement
    from alignlib.trainer.model import load_policy

    placement = Placement.resolve(device, "fp32")
    model, tokenizer = load_policy(ModelConfig(name_or_path=model_name), placement)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), tokenizer


def alignlib_generate(model: Any, tokenizer: Any, prompts: list[list[int]], args: Any) -> Callable:
    from alignlib.rollout.base import SamplingParams
    from alignlib.rollout.hf_engine import HFEngine

    engine = HFEngine(model, tokenizer, max_batch_size=len(prompts) * args.n)

    def run(seed: int) -> int:
        sampling = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new, seed=seed)
        return sum(len(g.token_ids) for gens in engine.generate(prompts, sampling) for g in gens)

    return run


def trl_generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], args: Any, workdir: str
) -> Callable:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir=workdir,
        per_device_train_batch_size=len(prompts) * args.n,
        num_generations=args.n,
        max_completion_length=args.max_new,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        use_vllm=False,
        gradient_checkpointing=False,  # TRL's default True only toggles around generate
        bf16=False,
        use_cpu=args.device == "cpu",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "unused"}]}])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
    )
    rows = [ids for ids in prompts for _ in range(args.n)]  # GRPO's RepeatSampler order

    def run(seed: int) -> int:
        torch.manual_seed(seed)
        completion_ids, _ = trainer._generate_single_turn(rows, None, {}, args.n)
        return sum(map(len, completion_ids))

    return run


def timed(run: Callable[[int], int], seed: int, device: str) -> tuple[float, int]:
    began = time.perf_counter()
    tokens = run(seed)
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - began, tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument(
        "--adapter", default=None, help="a saved peft LoRA adapter folder to load on top"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new", type=int, default=32, help="new tokens per sample")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side")
    args = parser.parse_args()
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames
    warnings.filterwarnings("ignore", category=UserWarning)  # TRL's config advice

    from alignlib.data import load_rows
    from alignlib.rollout.base import encode_prompts

    model, tokenizer = load(args.model, args.adapter, args.device)
    texts = [row["prompt"] for row in load_rows(DATA, limit=args.prompts)]
    vocab = model.get_input_embeddings().num_embeddings
    prompts = encode_prompts(
        tokenizer, texts, apply_chat_template=True, vocab_size=vocab, where=DATA
    )
    with tempfile.TemporaryDirectory() as workdir:
        sides = {
            "alignlib": alignlib_generate(model, tokenizer, prompts, args),
            "TRL 1.16": trl_generate(model, tokenizer, prompts, args, workdir),
        }
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in sides}
        for run in sides.values():
            timed(run, 10_000, args.device)  # warm-up: kernels, allocator, stop-string tables
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                results[name].append(timed(sides[name], repeat, args.device))
                seconds, tokens = results[name][-1]
                print(f"  repeat {repeat} {name:9} {seconds:7.2f} s {tokens:6d} tokens", flush=True)
    width = f", adapter {args.adapter}" if args.adapter else ""
    print(
        f"model {args.model}{width} on {args.device} (fp32), {args.prompts} prompts x "
        f"{args.n} samples, <= {args.max_new} new tokens, median of {args.repeats} repeats"
    )
    print(f"{'':16}{'s/call':>10}{'tokens/call':>13}{'tokens/s':>11}")
    rates = {}
    for name, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        tokens = statistics.median(t for _, t in runs)
        rates[name] = statistics.median(t / s for s, t in runs)
        print(f"{name:16}{seconds:10.2f}{tokens:13.0f}{rates[name]:11.1f}")
    print(f"tokens/s ratio alignlib / TRL: {rates['alignlib'] / rates['TRL 1.16']:.2f}")


if __name__ == "__main__":
    main()
