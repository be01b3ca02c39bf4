"""Preference training throughput, alignlib vs TRL 1.16, on the same model, data and batch shape.

`--method dpo` (default) against TRL's `DPOTrainer`, `simpo` against `CPOTrainer(loss_type=
"simpo", cpo_alpha=0)`, `orpo` against `ORPOTrainer` (both in trl.experimental; reference-free),
`kto` against `KTOTrainer` on the pairs unpaired (`--pairs` counts examples there; both sides
add a no-grad pass over the mismatched KL completions; the plain loop is skipped), `aot`
against `DPOTrainer(loss_type="aot")` (alignlib adds a no-grad pass over the mini-batch, which
its sort reads; TRL sorts each micro-batch, so the two losses differ, the work is the same),
`wpo` DPO with WPO's weights against `DPOTrainer(use_weighting=True)` (both read log Σπ² off
the LM head in the training forward; the plain loop is skipped).
Both trainers run full fine-tuning with AdamW, with DPO's reference log-probs precomputed once,
for the same number of optimizer steps over the same GSM8K-derived pairs. On CPU in fp32; on a GPU
(`--device cuda`) in bf16 mixed precision on both sides (fp32 master weights and AdamW state,
bf16 autocast: alignlib `model.precision: bf16-mixed`, TRL `bf16=True` on an fp32 model).
Reported: seconds per optimizer step (median of the timed steps after warm-up), the ratio, the
training pass's tokens/s (a step's mean non-pad tokens over that median), and
on a GPU the peak CUDA memory of each trainer; also the same step as a hand-written PyTorch loop
(`plain`: no library, full-vocabulary log-softmax), which shows how far above the model's own
compute each trainer runs.

    python benchmarks/dpo_vs_trl.py --model tiny:llama --steps 12
    python benchmarks/dpo_vs_trl.py --model tiny:llama --steps 12 --method orpo
    python benchmarks/dpo_vs_trl.py --model bundled:smollm2-135m-instruct --steps 6
    python benchmarks/dpo_vs_trl.py --model /tmp/qwen05b --device cuda --pairs 16 --micro 8 \
        --max-length 384 --steps 20

Run it on an otherwise idle machine: both trainers share the same cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

# Run as a script, also under `python -P` (the GPU check), which leaves this folder off sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cuda_measure import peak_text, synchronize, with_peak_memory

BATCH, MICRO, LIMIT, BETA, LR, MAX_LENGTH = 8, 4, 64, 0.1, 1e-5, 160
DEVICE, PRECISION = "cpu", "fp32"
PACKING = False  # --packing: alignlib forwards each micro-batch padding-free
METHOD = "dpo"  # --method
PARAMS = {
    "dpo": {"beta": BETA},
    "simpo": {"beta": 2.0, "gamma": 1.0},
    "orpo": {"beta": 0.1},
    "kto": {"beta": 0.1},
    "aot": {"beta": BETA},
    "wpo": {"beta": BETA},
}
"""Each method's hyperparameters, the same on both sides (the presets' defaults)."""


Run = tuple[list[float], float]
"""(seconds of each optimizer step, non-pad tokens trained on per step, prompt + completion of
both rows of every pair: the attention-mask sum, as alignlib's `tokens` and TRL's `num_tokens`)."""


def alignlib_step_times(model_name: str, steps: int, workdir: Path) -> Run:
    from alignlib.config import load_config
    from alignlib.trainer.loop import Trainer

    config = {
        "output_dir": str(workdir / "alignlib"),
        "model": {
            "name_or_path": model_name,
            "chat_template": False,
            "device": DEVICE,
            "precision": PRECISION,
        },
        "data": {
            "path": "builtin:gsm8k_short_pairs",
            "unpair": METHOD == "kto",
            "limit": LIMIT,
            "shuffle": False,
            "max_prompt_length": MAX_LENGTH - 32,
            "max_completion_length": 32,
        },
        "algorithm": {
            "name": "dpo" if METHOD == "wpo" else METHOD,
            "params": PARAMS[METHOD],
            "wpo": METHOD == "wpo",
        },
        "optim": {"lr": LR, "warmup_ratio": 0.0, "schedule": "constant", "grad_clip": None},
        "train": {
            "batch_size": BATCH,
            "micro_batch_size": MICRO,
            "max_steps": steps,
            "packing": PACKING,
        },
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    path = workdir / "alignlib.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = Trainer(load_config(path))
    result = trainer.train()
    # tokens / tokens_per_s is each step's measured wall time (forward, backward, step).
    tokens = statistics.mean(h["tokens"] for h in result.history)
    return [h["tokens"] / h["tokens_per_s"] for h in result.history], tokens


def load_model(model_name: str):  # type: ignore[no-untyped-def]
    """(model, tokenizer) as alignlib's trainer loads them, for the TRL and plain-loop sides."""
    from alignlib.config.schema import ModelConfig
    from alignlib.device import Placement
    from alignlib.trainer.model import load_policy

    placement = Placement.resolve(DEVICE, PRECISION)
    return load_policy(ModelConfig(name_or_path=model_name, chat_template=False), placement)


def trl_classes() -> tuple[type, type]:
    """TRL's config and trainer classes for ``METHOD``."""
    if METHOD in ("dpo", "aot", "wpo"):
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if METHOD == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if METHOD == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOConfig, ORPOTrainer


def trl_settings() -> dict[str, object]:
    """The method's hyperparameters under TRL's names."""
    params = PARAMS[METHOD]
    if METHOD in ("dpo", "kto", "aot", "wpo"):
        settings = {"beta": params["beta"], "precompute_ref_log_probs": True}
        if METHOD == "wpo":
            settings["use_weighting"] = True
        return settings | ({"loss_type": ["aot"]} if METHOD == "aot" else {})
    if METHOD == "simpo":
        return {
            "beta": params["beta"],
            "loss_type": "simpo",
            "simpo_gamma": params["gamma"],
            "cpo_alpha": 0.0,
        }
    return {"beta": params["beta"]}


def trl_step_times(model_name: str, steps: int, workdir: Path) -> Run:
    from datasets import Dataset
    from transformers import TrainerCallback

    from alignlib.data import load_rows
    from alignlib.data.formats import unpair_rows

    model, tokenizer = load_model(model_name)
    rows = load_rows("builtin:gsm8k_short_pairs", limit=LIMIT)
    if METHOD == "kto":  # as alignlib's data.unpair
        rows = unpair_rows(rows)
    data = Dataset.from_list([{**r, "prompt": r["prompt"] + "\n"} for r in rows])
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(DEVICE)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(DEVICE)  # TRL keeps the loss on the GPU: wait for the step's kernels
            times.append(time.perf_counter() - self.start)

    config_class, trainer_class = trl_classes()
    args = config_class(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=BATCH // MICRO,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_length=MAX_LENGTH,
        gradient_checkpointing=False,
        bf16=PRECISION != "fp32",
        use_cpu=DEVICE == "cpu",
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        max_grad_norm=0.0,
        dataloader_num_workers=0,
        seed=0,
        **trl_settings(),
    )
    trainer = trainer_class(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Timer()]
    )
    trainer.train()
    total = max(log.get("num_tokens", 0.0) for log in trainer.state.log_history)
    # The experimental trainers log no num_tokens: main() then counts alignlib's (same rows).
    return times, float(total) / steps if total else float("nan")


def plain_step_times(model_name: str, steps: int, workdir: Path) -> Run:
    """The floor: the same DPO step as a short hand-written PyTorch loop, with no library around
    it (TRL's rows and lengths; reference log-probs taken as given, so they cost nothing).

    Per micro-batch: chosen and rejected rows in one right-padded forward, full-vocabulary
    log-softmax, completion log-probs summed per row, −log σ(β·margin), backward; AdamW after
    the step's micro-batches. Its time is what the model's own compute costs at this shape.
    """
    from alignlib.data import load_rows

    model, tokenizer = load_model(model_name)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    pairs = []
    for row in load_rows("builtin:gsm8k_short_pairs", limit=LIMIT):
        prompt = tokenizer(row["prompt"] + "\n")["input_ids"]
        both = [prompt + tokenizer(row[k])["input_ids"] for k in ("chosen", "rejected")]
        pairs.append([(ids[:MAX_LENGTH], len(prompt)) for ids in both])
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=PRECISION != "fp32")
    times, tokens = [], 0
    for step in range(steps):
        synchronize(DEVICE)
        began = time.perf_counter()
        batch = [pairs[(step * BATCH + i) % len(pairs)] for i in range(BATCH)]
        for start in range(0, BATCH, MICRO):
            rows = [r for pair in batch[start : start + MICRO] for r in pair]  # c0 r0 c1 r1 ...
            width = max(len(ids) for ids, _ in rows)
            ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in rows], device=device)
            real = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
            tokens += int(real.sum())
            scored = real.clone()
            for k, (_, prompt_length) in enumerate(rows):
                scored[k, :prompt_length] = 0
            with autocast:
                logits = model(input_ids=ids, attention_mask=real.to(device)).logits
            logps = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
            per_row = (logps * scored[:, 1:].to(device)).sum(-1)
            margin = per_row[0::2] - per_row[1::2]  # minus the reference margin, taken as 0
            loss = -torch.nn.functional.logsigmoid(BETA * margin).sum() / BATCH
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(DEVICE)
        times.append(time.perf_counter() - began)
    return times, tokens / steps


def main() -> None:
    global BATCH, MICRO, MAX_LENGTH, LIMIT, DEVICE, PRECISION, PACKING, METHOD  # the knobs
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--packing", action="store_true", help="alignlib train.packing: true")
    parser.add_argument("--method", choices=sorted(PARAMS), default=METHOD)
    parser.add_argument("--pairs", type=int, default=BATCH, help="preference pairs per step")
    parser.add_argument("--micro", type=int, default=MICRO, help="pairs per forward/backward")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help="prompt + completion")
    args = parser.parse_args()
    BATCH, MICRO, MAX_LENGTH, DEVICE = args.pairs, args.micro, args.max_length, args.device
    PACKING, METHOD = args.packing, args.method
    LIMIT = max(LIMIT, BATCH * 4)
    PRECISION = "fp32" if DEVICE == "cpu" else "bf16-mixed"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        common = (args.model, args.steps, Path(tmp))
        runs = {
            "alignlib": with_peak_memory(DEVICE, alignlib_step_times, *common),
            "TRL 1.16": with_peak_memory(DEVICE, trl_step_times, *common),
        }
        if METHOD not in ("kto", "wpo"):  # the plain loop is a DPO pair step
            runs["plain"] = with_peak_memory(DEVICE, plain_step_times, *common)
    print(
        f"{METHOD}: model {args.model}, {BATCH} {'examples' if METHOD == 'kto' else 'pairs'}/step "
        f"in micro-batches of {MICRO}, {args.steps} steps, {DEVICE} {PRECISION}"
    )
    report(runs, args.warmup)


def report(runs: dict[str, tuple[Run, float | None]], warmup: int) -> None:
    """Median step time, training tokens/s and peak memory of each run, then the ratios."""
    ours_tokens = runs["alignlib"][0][1]
    medians = {}
    for name, ((times, tokens), peak) in runs.items():
        if tokens != tokens:  # NaN: TRL's experimental trainers count no tokens (same rows)
            tokens = ours_tokens
        medians[name] = statistics.median(times[warmup:])
        floor = "  (hand-written PyTorch step: the compute floor)" if name == "plain" else ""
        rate = tokens / medians[name]
        print(f"{name:<9} {medians[name]:.3f} s/step, {rate:.0f} tokens/s{peak_text(peak)}{floor}")
    a, t = medians["alignlib"], medians["TRL 1.16"]
    print(f"speed ratio (TRL time / alignlib time): {t / a:.2f}x")
    line = f"alignlib / TRL {a / t:.2f}"
    if "plain" in medians:
        f = medians["plain"]
        line += f", alignlib / plain {a / f:.2f}, TRL / plain {t / f:.2f}"
    print(line)


if __name__ == "__main__":
    main()
