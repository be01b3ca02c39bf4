"""INPO's online iterations (Zhang et al., ICLR 2025): for t = 1..T sample K responses per
prompt from π_t, rank them with the oracle, precompute log π_ref and log π_t for each pair,
and train π_{t+1} from π_t with the `inpo` estimator."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from alignlib.data import load_rows
from alignlib.rollout.base import SamplingParams
from alignlib.rollout.hf_engine import HFEngine
from alignlib.trainer.offline import cache_logprobs
from alignlib.trainer.sample_rank import pairs_to_examples, resolve_oracle, sample_and_rank

if TYPE_CHECKING:
    from alignlib.trainer.loop import Trainer, TrainResult


def run_inpo(trainer: Trainer) -> TrainResult:
    cfg = trainer.config
    inpo = cfg.inpo
    assert inpo is not None
    rows = load_rows(cfg.data.path, cfg.data.split, cfg.data.limit)
    if not rows or "prompt" not in rows[0]:
        raise ValueError(f"inpo: data.path {cfg.data.path} must hold rows with a 'prompt' field")
    oracle = resolve_oracle(inpo.oracle, trainer.placement.device)
    batch = cfg.train.micro_batch_size * 2
    # π_ref is the initial policy: the adapter-off model with LoRA, else a frozen copy.
    reference, ref_context = trainer.initial_reference()
    placement = trainer.placement
    engine = HFEngine(
        trainer.model,
        trainer.tokenizer,
        apply_chat_template=cfg.model.chat_template,
        autocast_dtype=placement.compute_dtype if placement.precision == "bf16-mixed" else None,
    )
    per_iteration = inpo.prompts_per_iteration or len(rows)
    log_path = trainer.output_dir / "iterations.jsonl"
    from alignlib.trainer.run_dir import prepare_output_dir

    prepare_output_dir(trainer.output_dir, cfg.checkpoint.resume)  # an earlier run moves aside
    result = None
    for t in range(1, inpo.iterations + 1):
        start = ((t - 1) * per_iteration) % len(rows)
        prompts = (rows + rows)[start : start + per_iteration]
        sampling = SamplingParams(
            n=inpo.samples_per_prompt,
            temperature=inpo.temperature,
            max_new_tokens=inpo.max_new_tokens,
            seed=cfg.train.seed + t,
        )
        pairs, stats = sample_and_rank(engine, prompts, oracle, sampling)
        if not pairs:
            raise ValueError(
                f"inpo iteration {t}: no prompt had a best response that beat its worst "
                f"(all {inpo.samples_per_prompt} samples scored the same); raise "
                "inpo.samples_per_prompt or inpo.temperature, or use a finer oracle"
            )
        examples = pairs_to_examples(pairs)
        ref_cache = cache_logprobs(
            trainer.kernel(reference), examples, trainer.pad_id, batch, ref_context
        )
        prev_cache = cache_logprobs(trainer.kernel(), examples, trainer.pad_id, batch)  # π_t
        result = trainer.fit(
            examples, ref_cache, prev_cache, output_dir=trainer.output_dir / f"iteration-{t}"
        )
        record = {
            "iteration": t,
            **stats,
            **{f"final/{k}": v for k, v in result.final_metrics.items()},
        }
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    assert result is not None
    trainer.save_final(trainer.output_dir)
    return dataclasses.replace(result, output_dir=trainer.output_dir)
