"""GRPO training throughput, alignlib vs TRL 1.16: same model, prompts, reward and batch shape.

Both trainers run full fine-tuning in fp32 on CPU and generate with plain transformers (no
vLLM), one generation call per rollout batch (alignlib: its transformers engine, which prefills
each prompt once for its samples and drops finished rows; TRL: `model.generate`):

    python benchmarks/grpo_vs_trl.py --model tiny:llama --steps 4
    python benchmarks/grpo_vs_trl.py --model bundled:smollm2-135m-instruct --steps 6
    python benchmarks/grpo_vs_trl.py --model /tmp/qwen05b --device cuda --prompts 8 --n 8 \
        --max-new 128 --micro 16 --steps 8

On a GPU both sides train in bf16 mixed precision (fp32 master weights, bf16 autocast:
alignlib `model.precision: bf16-mixed`, TRL `bf16=True` on an fp32 model) and generate under the
same autocast, and the peak CUDA memory of each trainer is reported too.

Matched: prompts (`builtin:arithmetic_prompts`, in order, through each tokenizer's chat
template), 4 prompts x 8 samples per step, at most 48 new tokens, temperature 1, top-p 1,
no top-k; reward = alignlib's math grader (`alignlib.rewards.grade_many`, boxed answer vs the
`answer` column); Â = (R − group mean) / group std; PPO clip ε = 0.2; per-sequence token mean
averaged over sequences (alignlib's `grpo` preset ↔ TRL `loss_type="grpo"`); no KL (β = 0, no
reference model); one optimizer step per rollout batch (TRL: num_iterations=1,
steps_per_generation = gradient_accumulation_steps = 4, so no old-log-prob pass in either);
micro-batches of 8 rows; torch AdamW (TRL `optim="adamw_torch"`), constant lr 1e-5, no
warm-up, grad clip 1.0; gradient checkpointing off on both (`--gradient-checkpointing`: on
for both; TRL's own default is on); seed 0. Not matched: the group-std epsilon (alignlib 1e-6,
TRL 1e-4), and the samples themselves (each trainer draws its own random stream), so completion
lengths, rewards and hence the trained tokens differ from step to step: compare tokens/s, not
only s/step.
Also different by design: alignlib's engine records each sampled token's log-prob as it draws
it (TRL without vLLM does not), and trains each micro-batch at its own padded width (TRL pads to the
whole rollout batch's). The SmolLM2 run takes about 13 minutes on 2 cores; tiny:llama 20 s.

Reported per trainer, median over the steps after `--warmup`:
  s/step       whole optimizer step: rollout, reward, training forward/backward, AdamW step
  gen tok/s    generated tokens / time in `generate` (alignlib: `time/rollout_s`; TRL: a wrapper
               around `GRPOTrainer._generate_single_turn`, i.e. `model.generate` + EOS masking)
  train tok/s  non-pad prompt + completion tokens / training time (alignlib: `time/logprob_s +
               time/update_s`; TRL: step time − `_generate_and_score_completions`, so TRL's
               figure also carries the Trainer loop's own overhead between micro-batches)
and the ratio alignlib / TRL of each (below 1 for s/step means alignlib is faster).
Run it on an otherwise idle machine with OMP_NUM_THREADS set: both trainers share the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml

# Run as a script, also under `python -P` (the GPU check), which leaves this folder off sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cuda_measure import peak_text, synchronize, with_peak_memory

PROMPTS, N, MICRO, MAX_NEW, LR, CLIP, EPS, LIMIT = 4, 8, 8, 48, 1e-5, 1.0, 0.2, 64
DATA = "builtin:arithmetic_prompts"
DEVICE, PRECISION = "cpu", "fp32"
PACKING = False  # --packing: alignlib forwards each micro-batch padding-free
CHECKPOINTING = False  # --gradient-checkpointing: both sides recompute activations in backward


@dataclass
class Step:
    seconds: float  # the whole optimizer step
    gen_seconds: float  # inside generate
    gen_tokens: float  # completion tokens generated
    train_seconds: float  # training forward/backward and optimizer step
    train_tokens: float  # non-pad prompt + completion tokens trained on


def alignlib_steps(model_name: str, steps: int, workdir: Path) -> list[Step]:
    from alignlib.config import load_config
    from alignlib.trainer.loop import Trainer

    config = {
        "output_dir": str(workdir / "alignlib"),
        "model": {
            "name_or_path": model_name,
            "chat_template": True,
            "device": DEVICE,
            "precision": PRECISION,
            "gradient_checkpointing": CHECKPOINTING,
        },
        "data": {"path": DATA, "limit": LIMIT, "shuffle": False},
        "algorithm": {"name": "grpo", "params": {"eps_low": EPS, "eps_high": EPS}},
        "optim": {"lr": LR, "warmup_ratio": 0.0, "schedule": "constant", "grad_clip": CLIP},
        "train": {"max_steps": steps, "seed": 0, "packing": PACKING},
        "rollout": {"engine": "transformers", "n": N, "temperature": 1.0, "top_p": 1.0}
        | {"max_new_tokens": MAX_NEW, "max_batch_size": PROMPTS * N},
        "online": {
            "prompts_per_step": PROMPTS,
            "mini_batches": 1,
            "micro_batch_size": MICRO,
            "rewards": [{"name": "math"}],
        },
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    path = workdir / "alignlib.yaml"
    path.write_text(yaml.safe_dump(config))
    result = Trainer(load_config(path)).train()
    out = []
    for h in result.history:
        if "time/step_s" not in h:  # a held-out evaluation row (none here)
            continue
        train_s = h["time/logprob_s"] + h["time/update_s"]
        out.append(
            Step(
                seconds=h["time/step_s"],
                gen_seconds=h["time/rollout_s"],
                gen_tokens=h["rollout/tokens_per_s"] * h["time/rollout_s"],
                train_seconds=train_s,
                train_tokens=h["train/tokens_per_s"] * train_s,
            )
        )
    return out


def math_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """TRL reward function: alignlib's math grader on the completion text vs `answer`."""
    from alignlib.rewards import grade_many

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if ok else 0.0 for ok in grade_many(texts, [str(a) for a in answer])]


def step_timer(
    device: str, done: list[Step], now: dict[str, float], losses: list[float] | None = None
) -> Any:
    """A TrainerCallback appending each optimizer step's timing to ``done``: its seconds, and
    the generation / training time and tokens the instrumented trainer adds up in ``now``;
    with ``losses``, the logged losses too. ``device``'s kernels are waited for."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            now.clear()
            now["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)  # TRL keeps the loss on the GPU: wait for the step's kernels
            seconds = time.perf_counter() - now["start"]
            gen = (now.get("gen_s", 0.0), now.get("gen_tokens", 0.0))
            train = (seconds - now.get("rollout_s", 0.0), now.get("train_tokens", 0.0))
            done.append(Step(seconds, *gen, *train))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if losses is not None and logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return Timer()


def trl_steps(model_name: str, steps: int, workdir: Path) -> list[Step]:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignlib.config.schema import ModelConfig
    from alignlib.data import load_rows
    from alignlib.device import Placement
    from alignlib.trainer.model import load_policy

    placement = Placement.resolve(DEVICE, PRECISION)
    model, tokenizer = load_policy(ModelConfig(name_or_path=model_name), placement)
    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in load_rows(DATA, limit=LIMIT)]
    data = Dataset.from_list(
        [r | {"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    )
    done: list[Step] = []
    current: dict[str, float] = {}

    args = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=PROMPTS * N // MICRO,
        steps_per_generation=PROMPTS * N // MICRO,
        num_iterations=1,
        num_generations=N,
        max_completion_length=MAX_NEW,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=EPS,
        loss_type="grpo",
        scale_rewards="group",
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=CLIP,
        shuffle_dataset=False,
        use_vllm=False,
        # TRL's own default is True: left unset, TRL would recompute every activation in
        # backward (less memory, slower training) while alignlib keeps them
        gradient_checkpointing=CHECKPOINTING,
        bf16=PRECISION != "fp32",
        use_cpu=DEVICE == "cpu",
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=math_reward,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[step_timer(DEVICE, done, current)],
    )
    generate, generate_and_score = (
        trainer._generate_single_turn,
        trainer._generate_and_score_completions,
    )

    def timed_generate(*a: Any, **k: Any) -> Any:
        began = time.perf_counter()
        completion_ids, logprobs = generate(*a, **k)
        current["gen_s"] = current.get("gen_s", 0.0) + time.perf_counter() - began
        current["gen_tokens"] = current.get("gen_tokens", 0.0) + sum(map(len, completion_ids))
        return completion_ids, logprobs

    def timed_generate_and_score(*a: Any, **k: Any) -> Any:
        began = time.perf_counter()
        batch = generate_and_score(*a, **k)
        current["rollout_s"] = current.get("rollout_s", 0.0) + time.perf_counter() - began
        tokens = batch["prompt_mask"].sum() + batch["completion_mask"].sum()
        current["train_tokens"] = current.get("train_tokens", 0.0) + float(tokens)
        return batch

    trainer._generate_single_turn = timed_generate  # type: ignore[method-assign]
    trainer._generate_and_score_completions = timed_generate_and_score  # type: ignore[method-assign]
    trainer.remove_callback(PrinterCallback)  # no end-of-run metrics dump
    trainer.train()
    return done


def medians(steps: list[Step], warmup: int) -> Step:
    timed = steps[warmup:] or steps
    return Step(*(statistics.median(getattr(s, f.name) for s in timed) for f in fields(Step)))


def rates(m: Step) -> tuple[float, float, float, float]:
    """s/step, gen tok/s, train tok/s, completion tokens per step."""
    return m.seconds, m.gen_tokens / m.gen_seconds, m.train_tokens / m.train_seconds, m.gen_tokens


def main() -> None:
    global PROMPTS, N, MICRO, MAX_NEW, LIMIT, DEVICE, PRECISION, PACKING, CHECKPOINTING
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--packing", action="store_true", help="alignlib train.packing: true")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per step")
    parser.add_argument("--n", type=int, default=N, help="samples per prompt")
    parser.add_argument("--max-new", type=int, default=MAX_NEW, help="new tokens per sample")
    parser.add_argument("--micro", type=int, default=MICRO, help="rows per forward/backward")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="both sides (default: neither)"
    )
    args = parser.parse_args()
    PROMPTS, N, MAX_NEW, MICRO = args.prompts, args.n, args.max_new, args.micro
    DEVICE = args.device
    PACKING, CHECKPOINTING = args.packing, args.gradient_checkpointing
    PRECISION = "fp32" if DEVICE == "cpu" else "bf16-mixed"
    LIMIT = max(LIMIT, PROMPTS * (args.steps + 1))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        common = (args.model, args.steps, Path(tmp))
        ours, our_peak = with_peak_memory(DEVICE, alignlib_steps, *common)
        theirs, their_peak = with_peak_memory(DEVICE, trl_steps, *common)
    print(
        f"model {args.model}, {PROMPTS} prompts x {N} samples/step in micro-batches of {MICRO}, "
        f"<= {MAX_NEW} new tokens, {args.steps} steps, median of steps {args.warmup + 1}-"
        f"{args.steps}, gradient checkpointing {'on' if CHECKPOINTING else 'off'} on both sides"
    )
    print_table(ours, theirs, args.warmup, (our_peak, their_peak))


def print_table(ours: list[Step], theirs: list[Step], warmup: int, peaks: tuple[Any, Any]) -> None:
    """Median s/step, generation and training rates of both trainers (after ``warmup`` steps),
    their peak CUDA memory when measured, and the ratios alignlib / TRL."""
    a, t = rates(medians(ours, warmup)), rates(medians(theirs, warmup))
    print(f"{'':16}{'s/step':>10}{'gen tok/s':>12}{'train tok/s':>13}{'gen tok/step':>14}")
    for name, row, peak in (("alignlib", a, peaks[0]), ("TRL 1.16", t, peaks[1])):
        cells = f"{row[0]:10.3f}{row[1]:12.1f}{row[2]:13.1f}{row[3]:14.0f}"
        print(f"{name:16}{cells}{peak_text(peak, '  ')}")
    ratio = [x / y for x, y in zip(a, t, strict=True)]
    print(f"{'alignlib / TRL':16}{ratio[0]:10.2f}{ratio[1]:12.2f}{ratio[2]:13.2f}{ratio[3]:14.2f}")
    print(f"speed ratio (TRL s/step / alignlib s/step): {t[0] / a[0]:.2f}x")


if __name__ == "__main__":
    main()
