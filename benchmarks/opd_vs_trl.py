"""On-policy distillation throughput, alignlib vs TRL 1.16: same student, teacher, prompts, batch.

alignlib's `opd` preset against TRL's `trl.experimental.iw_opd.IWOPDTrainer` (`lmbda=1`, fully
on-policy; `distillation_objective="iw_opd"`, `iw_opd_gamma=0`): the student samples, the
teacher scores each sampled token, and −Â_t·log π_θ(y_t), Â_t = log π_T(y_t) − log π_θ(y_t)
(detached), trains the student per token. Full fine-tuning; plain transformers generation on
both sides (no vLLM):

    python benchmarks/opd_vs_trl.py --model tiny:llama --steps 4
    python benchmarks/opd_vs_trl.py --model bundled:smollm2-135m-instruct \
        --teacher runs/quickstart --steps 6

Without `--teacher` (tiny:llama only) the teacher is tiny:llama's shape and tokenizer with
peakier weights (`build_tiny_model(build_tokenizer(), hidden=64, layers=2, seed=1,
init_std=0.3)`) saved into a temp folder (`--save-teacher DIR` keeps it). `--teacher` takes a
model folder or a run folder (`runs/quickstart`, from `alignlib train configs/quickstart.yaml`):
`alignlib.eval.loading.hf_folder_for` merges a LoRA run's adapter into a plain temp folder that
both trainers load. Both load the student with alignlib's loader (identical weights) and the
teacher in the frozen dtype: fp32 on a CPU, bf16 on a GPU (`--device cuda`), where both train in
bf16 mixed precision as in grpo_vs_trl.py and the peak CUDA memory is reported too.

Matched: prompts (`builtin:arithmetic_prompts` in order, TRL's sampler unshuffled; each
tokenizer's chat template), 4 prompts x 8 samples per step, at most 48 new tokens, temperature
1, top-p 1, no top-k; the loss above averaged over all the step's completion tokens (TRL 1.16
counts them on the prompt-only dataset rows: 0, a -inf loss and NaN weights after one step; the
benchmark passes it the generated count, as huggingface/trl#6478 does for DistillationTrainer);
one optimizer step per rollout batch in micro-batches of 8 rows (TRL: gradient accumulation 4,
every slice on-policy); torch AdamW, constant lr 1e-5, no warm-up, grad clip 1.0; no dropout;
gradient checkpointing off on both (`--gradient-checkpointing`: on for both; TRL's default is
on); seed 0. alignlib only logs `online.rewards: math` (opd reads no reward). Not matched: the
samples (each trainer draws its own random stream), so completion lengths and the trained
tokens differ: compare tokens/s, not only s/step. Different by design: TRL without vLLM calls
`model.generate` once per accumulation slice (4 calls of 8 rows; `--micro 32` makes it one, and
alignlib's micro-batches 32 rows), alignlib once per step (its engine prefills each prompt once
for its samples and drops finished rows); TRL trains each micro-batch at its generation slice's
padded width, alignlib at the micro-batch's own; TRL runs the teacher inside each micro-batch's
`compute_loss` on full [rows, T, V] logits, alignlib in a no-grad pass before the update
(`time/logprob_s`) with its chunked LM-head kernel. tiny:llama takes 15 s on 2 cores; SmolLM2
longer than grpo_vs_trl.py's 13 minutes (the teacher passes come on top).

Reported per trainer, median over the steps after `--warmup`:
  s/step       whole optimizer step: rollout, teacher pass, student forward/backward, AdamW step
  gen tok/s    generated tokens / time generating (alignlib: `time/rollout_s`; TRL: a wrapper
               around `IWOPDTrainer._generate_with_model`: `model.generate`, masks, decoding)
  train tok/s  non-pad prompt + completion tokens / training time (alignlib: `time/logprob_s`
               + `time/update_s`; TRL: step time − `_fill_buffer`, with the Trainer's overhead)
and the ratio alignlib / TRL of each (below 1 for s/step: alignlib faster). Run it on an idle
machine with OMP_NUM_THREADS set: both trainers share the cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

# Run as a script, also under `python -P`, which leaves this folder off sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cuda_measure import with_peak_memory
from grpo_vs_trl import Step, print_table, step_timer

PROMPTS, N, MICRO, MAX_NEW, LR, CLIP, LIMIT = 4, 8, 8, 48, 1e-5, 1.0, 64
DATA, DEVICE, PRECISION = "builtin:arithmetic_prompts", "cpu", "fp32"
CHECKPOINTING = False  # --gradient-checkpointing: both sides recompute activations in backward
Run = tuple[list[Step], list[float]]  # per-step timings, per-step losses


def tiny_teacher(folder: Path) -> str:
    """tiny:llama's shape and tokenizer, other (peakier) weights, saved for both trainers."""
    from alignlib.testing import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, hidden=64, layers=2, seed=1, init_std=0.3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def alignlib_steps(student: str, teacher: str, steps: int, workdir: Path) -> Run:
    from alignlib.config import load_config
    from alignlib.trainer.loop import Trainer

    config = {
        "output_dir": str(workdir / "alignlib"),
        "model": {"name_or_path": student, "reference_name_or_path": teacher}
        | {"chat_template": True, "device": DEVICE, "precision": PRECISION}
        | {"gradient_checkpointing": CHECKPOINTING},
        "data": {"path": DATA, "limit": LIMIT, "shuffle": False},
        "algorithm": {"name": "opd"},
        "optim": {"lr": LR, "warmup_ratio": 0.0, "schedule": "constant", "grad_clip": CLIP},
        "train": {"max_steps": steps, "seed": 0},
        "rollout": {"engine": "transformers", "n": N, "temperature": 1.0, "top_p": 1.0}
        | {"max_new_tokens": MAX_NEW, "max_batch_size": PROMPTS * N},
        "online": {"prompts_per_step": PROMPTS, "mini_batches": 1, "micro_batch_size": MICRO}
        | {"rewards": [{"name": "math"}]},  # logged only
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    path = workdir / "alignlib.yaml"
    path.write_text(yaml.safe_dump(config))
    result = Trainer(load_config(path)).train()
    out, losses = [], []
    for h in result.history:
        if "time/step_s" not in h:  # a held-out evaluation row (none here)
            continue
        train_s = h["time/logprob_s"] + h["time/update_s"]
        gen = (h["time/rollout_s"], h["rollout/tokens_per_s"] * h["time/rollout_s"])
        out.append(Step(h["time/step_s"], *gen, train_s, h["train/tokens_per_s"] * train_s))
        losses.append(h["loss"])
    return out, losses


def trl_config(workdir: Path, steps: int) -> Any:
    from trl.experimental.iw_opd import IWOPDConfig

    ga = PROMPTS * N // MICRO
    batch = {"per_device_train_batch_size": MICRO, "gradient_accumulation_steps": ga}
    # every accumulation slice on-policy; no IW-OPD prefix weight (alignlib's opd, iw_gamma 0)
    loss = {"lmbda": 1.0, "distillation_objective": "iw_opd", "iw_opd_gamma": 0.0}
    sampling = {"num_generations": N, "max_completion_length": MAX_NEW, "temperature": 1.0}
    sampling |= {"top_p": 1.0, "top_k": 0, "use_vllm": False, "disable_dropout": True}
    optim = {"learning_rate": LR, "lr_scheduler_type": "constant", "warmup_steps": 0}
    optim |= {"optim": "adamw_torch", "weight_decay": 0.0, "max_grad_norm": CLIP}
    # TRL's own gradient_checkpointing default is True; its bf16 default True even on a CPU
    run = {"max_steps": steps, "gradient_checkpointing": CHECKPOINTING, "seed": 0}
    run |= {"bf16": PRECISION != "fp32", "use_cpu": DEVICE == "cpu", "report_to": "none"}
    run |= {"save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}
    return IWOPDConfig(output_dir=str(workdir / "trl"), **batch, **loss, **sampling, **optim, **run)


def trl_trainer(student: str, teacher: str, steps: int, workdir: Path, callback: Any) -> Any:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl.experimental.iw_opd import IWOPDTrainer
    from trl.trainer.utils import RepeatSampler

    from alignlib.config.schema import ModelConfig
    from alignlib.data import load_rows
    from alignlib.device import Placement
    from alignlib.models import load_model_and_tokenizer
    from alignlib.trainer.model import load_policy

    placement = Placement.resolve(DEVICE, PRECISION)
    model, tokenizer = load_policy(ModelConfig(name_or_path=student), placement)
    # From its folder, so config._name_or_path names it: TRL loads its tokenizer from there.
    frozen, _ = load_model_and_tokenizer(teacher, placement.frozen_dtype, device=placement.device)
    rows = load_rows(DATA, limit=LIMIT)
    chats = [{"messages": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    data = Dataset.from_list(chats)
    trainer = IWOPDTrainer(
        model=model,
        teacher_model=frozen.requires_grad_(False),
        args=trl_config(workdir, steps),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # no per-step log dump

    def in_order(dataset: Any = None) -> RepeatSampler:  # TRL's sampler, unshuffled
        return RepeatSampler(data, mini_repeat_count=N, batch_size=PROMPTS, shuffle=False, seed=0)

    trainer._get_train_sampler = in_order  # type: ignore[method-assign]
    return trainer


def instrument(trainer: Any, now: dict[str, float]) -> None:
    """Time generation and the whole buffer fill (split + generate every slice) into ``now``;
    count the step's tokens; and divide the loss by the step's completion tokens."""
    generate, fill = trainer._generate_with_model, trainer._fill_buffer
    compute = trainer.compute_loss

    def timed_generate(*a: Any, **k: Any) -> None:
        began = time.perf_counter()
        generate(*a, **k)
        now["gen_s"] = now.get("gen_s", 0.0) + time.perf_counter() - began

    def timed_fill(*a: Any, **k: Any) -> None:
        began = time.perf_counter()
        fill(*a, **k)
        now["rollout_s"] = now.get("rollout_s", 0.0) + time.perf_counter() - began
        for rows in trainer._buffered_inputs:
            now["gen_tokens"] = now.get("gen_tokens", 0.0) + float((rows["labels"] != -100).sum())
            tokens = float(rows["attention_mask"].sum())
            now["train_tokens"] = now.get("train_tokens", 0.0) + tokens

    def compute_loss(model: Any, inputs: Any, return_outputs: bool = False, **_: Any) -> Any:
        # TRL 1.16 counts num_items_in_batch on the prompt-only rows (0: loss -inf, NaN weights);
        # pass the generated completion tokens, as huggingface/trl#6478 does.
        return compute(model, inputs, return_outputs, num_items_in_batch=now["gen_tokens"])

    trainer._generate_with_model = timed_generate  # type: ignore[method-assign]
    trainer._fill_buffer = timed_fill  # type: ignore[method-assign]
    trainer.compute_loss = compute_loss  # type: ignore[method-assign]


def trl_steps(student: str, teacher: str, steps: int, workdir: Path) -> Run:
    done: list[Step] = []
    losses: list[float] = []
    now: dict[str, float] = {}

    trainer = trl_trainer(student, teacher, steps, workdir, step_timer(DEVICE, done, now, losses))
    instrument(trainer, now)
    trainer.train()
    return done, losses


def report(args: argparse.Namespace, ours: tuple[Run, Any], theirs: tuple[Run, Any]) -> None:
    (our_run, our_peak), (their_run, their_peak) = ours, theirs
    print(
        f"student {args.model}, teacher {args.teacher or 'tiny (seed 1)'}, {PROMPTS} prompts x "
        f"{N} samples/step in micro-batches of {MICRO}, <= {MAX_NEW} new tokens, {args.steps} "
        f"steps, median of steps {args.warmup + 1}-{args.steps}, gradient checkpointing "
        f"{'on' if CHECKPOINTING else 'off'} on both sides"
    )
    print_table(our_run[0], their_run[0], args.warmup, (our_peak, their_peak))
    for name, (timed, losses) in (("alignlib", our_run), ("TRL", their_run)):
        finite = all(math.isfinite(x) for x in losses) and len(losses) == len(timed)
        shown = " ".join(f"{x:.4f}" for x in losses)
        print(f"{name} loss per step: {shown}{'' if finite else '  (NOT all finite / logged)'}")


def main() -> None:
    global PROMPTS, N, MICRO, MAX_NEW, LIMIT, DEVICE, PRECISION, CHECKPOINTING
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny:llama", help="the student")
    parser.add_argument("--teacher", help="model or run folder (default: a tiny teacher)")
    parser.add_argument("--save-teacher", type=Path, help="also keep the tiny teacher here")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per step")
    parser.add_argument("--n", type=int, default=N, help="samples per prompt")
    parser.add_argument("--max-new", type=int, default=MAX_NEW, help="new tokens per sample")
    parser.add_argument("--micro", type=int, default=MICRO, help="rows per forward/backward")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    args = parser.parse_args()
    if args.teacher is None and args.model != "tiny:llama":
        parser.error("--teacher is needed unless the student is tiny:llama")
    PROMPTS, N, MAX_NEW, MICRO = args.prompts, args.n, args.max_new, args.micro
    DEVICE, CHECKPOINTING = args.device, args.gradient_checkpointing
    PRECISION = "fp32" if DEVICE == "cpu" else "bf16-mixed"
    LIMIT = max(LIMIT, PROMPTS * (args.steps + 1))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental's import warning
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        merged = None  # a LoRA run's teacher, merged into a temp folder
        if args.teacher is None:
            teacher = tiny_teacher(args.save_teacher or Path(tmp) / "teacher")
        else:
            from alignlib.eval.loading import hf_folder_for  # after the offline variables

            teacher, merged = hf_folder_for(args.teacher, key="--teacher")
        common = (args.model, teacher, args.steps, Path(tmp))
        ours = with_peak_memory(DEVICE, alignlib_steps, *common)
        theirs = with_peak_memory(DEVICE, trl_steps, *common)
        if merged is not None:
            merged.cleanup()
    report(args, ours, theirs)


if __name__ == "__main__":
    main()
