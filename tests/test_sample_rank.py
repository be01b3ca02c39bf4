"""Sample-and-rank: best/worst pairs from the policy's own samples (INPO, BVPO)."""

from __future__ import annotations

import torch

from alignlib.estimator import Role
from alignlib.rollout.base import SamplingParams
from alignlib.rollout.hf_engine import HFEngine
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.sample_rank import build_bvpo_examples, resolve_oracle, sample_and_rank

ROWS = [{"prompt": f"What is {a} + {a}?", "answer": str(2 * a)} for a in range(1, 5)]


def engine() -> HFEngine:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    return HFEngine(build_tiny_model(tokenizer, init_std=0.5), tokenizer)


def test_pairs_are_best_and_worst_by_the_oracle() -> None:
    eng = engine()
    oracle = resolve_oracle("oracles_for_tests:shortest")
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=3)
    pairs, stats = sample_and_rank(eng, ROWS, oracle, sampling)
    generations = eng.generate([r["prompt"] for r in ROWS], sampling)
    assert pairs and stats["pairs"] == len(pairs)
    for pair in pairs:
        index = next(i for i, r in enumerate(ROWS) if r["prompt"] == pair.row["prompt"])
        lengths = [len(g.text) for g in generations[index]]
        assert pair.chosen_score == -min(lengths) and pair.rejected_score == -max(lengths)
        assert pair.chosen_score > pair.rejected_score


def test_bvpo_examples_carry_trace_flags_and_the_empty_block() -> None:
    eng = engine()
    oracle = resolve_oracle("oracles_for_tests:shortest")
    sampling = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=1)
    examples, stats = build_bvpo_examples(eng, ROWS, oracle, sampling)
    flags = [e.trace for e in examples]
    assert True in flags and False in flags
    prefix = eng.tokenizer.encode("<think>\n\n</think>\n\n", add_special_tokens=False)
    for example in examples:
        assert example.roles == [Role.CHOSEN, Role.REJECTED]
        for seq, start in zip(example.sequences, example.completion_starts, strict=True):
            starts_empty = seq[start : start + len(prefix)] == prefix
            assert starts_empty == (example.trace is False)
    assert [e.index for e in examples] == list(range(len(examples)))
    assert "trace/pairs" in stats and "empty/pairs" in stats
