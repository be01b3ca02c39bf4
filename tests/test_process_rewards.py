"""Learned rewards in online runs and process supervision: a process reward model scores each
step in TRL's PRM layout (checked against a forward pass built here), its step scores sit on
the steps' last tokens, an outcome reward model scores each completion, misuse is one line, and
process-supervised GRPO learns from turn rewards."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from test_environment import write_config
from test_online import make_config, spy
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
)

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.estimator import ADVANTAGES, Batch
from alignlib.rewards import (
    ProcessRewardScorer,
    RewardModelScorer,
    TaggedProcessRewardScorer,
    split_steps,
)
from alignlib.rewards.learned import reduce_steps
from alignlib.testing import build_tiny_classifier, build_tiny_model, build_tokenizer
from alignlib.trainer.loop import Trainer
from alignlib.trainer.step_rewards import token_positions

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_head_model(tmp: Path, kind: type, labels: int, seed: int = 0) -> Path:
    """A random tiny Llama with a classification head, saved with the offline tokenizer."""
    tokenizer = build_tokenizer()
    folder = tmp / kind.__name__
    build_tiny_classifier(tokenizer, kind, labels, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------- the scorer
def test_steps_are_the_non_blank_pieces_between_separators() -> None:
    text = "First, 2 + 3 = 5.\n\nThen 5 * 2 = 10.\n\n \n\nSo \\boxed{10}.\n\n"
    steps = split_steps(text, "\n\n")
    assert [s.text for s in steps] == ["First, 2 + 3 = 5.", "Then 5 * 2 = 10.", "So \\boxed{10}."]
    assert all(text[: s.end].endswith(s.text) for s in steps)
    assert split_steps("   ", "\n") == split_steps("", "\n") and split_steps("", "\n")[0].end == 0


def test_prm_scores_each_steps_separator_in_trls_layout(tmp_path: Path) -> None:
    folder = tiny_head_model(tmp_path, LlamaForTokenClassification, labels=2)
    model = AutoModelForTokenClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = ["What is 2 + 3?", "Add 4 and 4.", "Hi", "Compute 7 * 6."]
    completions = ["2 + 3 = 5\nSo 5", "4 + 4 = 8", "", "7 * 6 = 42\nCheck: 42 / 6 = 7\nDone"]
    got = ProcessRewardScorer(model, tokenizer, "\n", batch_size=3)(prompts, completions)
    for prompt, completion, scores in zip(prompts, completions, got, strict=True):
        # TRL's PRMTrainer.tokenize_row, written out: bos, prompt, each step + separator.
        ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        ends = []
        pieces = [p for p in completion.split("\n") if p.strip()] or [""]
        for piece in pieces:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += tokenizer.encode("\n", add_special_tokens=False)
            ends.append(len(ids) - 1)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        want = logits.softmax(-1)[ends, 1].tolist()
        assert scores == pytest.approx(want, abs=1e-5)
        assert len(scores) == len(pieces)
    one = ProcessRewardScorer(model, tokenizer, "\n", batch_size=1)(prompts, completions)
    assert one == [pytest.approx(s, abs=1e-5) for s in got]  # batch invariant


def test_tagged_prm_reads_the_good_token_at_each_tag_as_math_shepherd_does(
    tmp_path: Path,
) -> None:
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, init_std=0.2)
    prompts = ["What is 2 + 3?", "Add 4 and 4.", "Hi"]
    completions = ["2 + 3 = 5\nSo 5", "4 + 4 = 8", "Step one\n\nStep two\nthree"]
    got = TaggedProcessRewardScorer(model, tokenizer, "\n", batch_size=2)(prompts, completions)
    good, bad = (tokenizer.encode(t, add_special_tokens=False)[0] for t in ("+", "-"))
    tag_id = tokenizer.encode("ки", add_special_tokens=False)[-1]
    for prompt, completion, scores in zip(prompts, completions, got, strict=True):
        # Math-Shepherd's example: f"{question} {output}", each step ending in " ки".
        steps = [line for line in completion.split("\n") if line.strip()]
        text = f"{prompt} " + "\n".join(f"{step} ки" for step in steps)
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[..., [good, bad]].double()
        want = logits.softmax(-1)[..., 0][ids == tag_id].tolist()
        assert scores == pytest.approx(want, abs=1e-5) and len(scores) == len(steps)


def test_reductions() -> None:
    scores = [0.9, 0.2, 0.5]
    assert reduce_steps(scores, "min") == 0.2 and reduce_steps(scores, "last") == 0.5
    assert reduce_steps(scores, "mean") == pytest.approx(1.6 / 3)
    assert reduce_steps(scores, "product") == pytest.approx(0.09)
    assert reduce_steps(scores, "steps") == pytest.approx(1.6)


def test_token_positions_find_the_token_that_completes_each_offset() -> None:
    tokenizer = build_tokenizer()
    rng = random.Random(0)
    words = ["2", " +", " 3", "=", "5", "\n", " so", " the", " answer", ".", "\n\n", "x"]
    for _ in range(30):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 15)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        ends = sorted(rng.sample(range(1, len(text) + 1), min(3, len(text))))
        for end, k in zip(ends, token_positions(tokenizer, ids, ends), strict=True):
            assert len(tokenizer.decode(ids[: k + 1])) >= end
            assert k == 0 or len(tokenizer.decode(ids[:k])) < end


# ------------------------------------------------------------------------------ online runs
def prm_config(tmp: Path, reduce: str = "steps", weight: float = 2.0, **extra: Any) -> Path:
    folder = tiny_head_model(tmp, LlamaForTokenClassification, labels=2)
    spec = {"path": str(folder), "reduce": reduce, "step_separator": " "}
    rewards = [{"name": "process_reward_model", "weight": weight, "params": spec}]
    return make_config(
        tmp,
        algorithm={"name": "grpo_process"},
        rollout={"n": 4, "max_new_tokens": 10},
        online={"rewards": rewards, **extra},
    )


def test_prm_step_scores_sit_on_the_steps_last_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    config = load_config(prm_config(tmp_path), ["train.max_steps=1"])
    history = Trainer(config).train().history
    (rollouts,), (rows,) = seen["rollouts"], seen["rows"]
    folder = config.online.rewards[0].params["path"]
    scorer = ProcessRewardScorer(
        AutoModelForTokenClassification.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder),
        " ",
    )
    policy = build_tokenizer()
    by_tokens = {}
    for p, gens in enumerate(rollouts.generations):
        scores = scorer([rollouts.rows[p]["prompt"]] * len(gens), [g.text for g in gens])
        for s, (gen, own) in enumerate(zip(gens, scores, strict=True)):
            assert float(rollouts.rewards[p, s]) == pytest.approx(2 * sum(own), abs=1e-4)
            steps = rollouts.step_rewards[p][s]
            assert steps is not None and len(steps) == len(own)
            ends = [step.end for step in split_steps(gen.text, " ")]
            positions = sorted(steps)
            assert positions[-1] == len(gen.token_ids) - 1  # the last step closes the row
            for position, end in zip(positions[:-1], ends[:-1], strict=True):
                assert len(policy.decode(gen.token_ids[: position + 1])) >= end
                assert len(policy.decode(gen.token_ids[:position])) < end
            want = [2 * v for v in own]
            assert [steps[t] for t in positions] == pytest.approx(want, abs=1e-4)
            by_tokens[tuple(gen.token_ids)] = steps
    for seq, start, steps in zip(rows.sequences, rows.starts, rows.step_rewards, strict=True):
        assert steps == by_tokens[tuple(seq[start:])]
    counts = [len(s) for gens in rollouts.step_rewards for s in gens]
    assert history[0]["rollout/steps"] == pytest.approx(sum(counts) / len(counts))


def test_reward_model_scores_each_completion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    folder = tiny_head_model(tmp_path, LlamaForSequenceClassification, labels=1)
    rewards = [{"name": "reward_model", "weight": 0.5, "params": {"path": str(folder)}}]
    path = make_config(tmp_path, online={"rewards": rewards})
    Trainer(load_config(path, ["train.max_steps=1"])).train()
    (rollouts,) = seen["rollouts"]
    scorer = RewardModelScorer(
        LlamaForSequenceClassification.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder),
    )
    for p, gens in enumerate(rollouts.generations):
        want = scorer([rollouts.rows[p]["prompt"]] * len(gens), [g.text for g in gens])
        got = rollouts.rewards[p].tolist()
        assert got == pytest.approx([0.5 * w for w in want], abs=1e-5)
    assert all(s is None for gens in rollouts.step_rewards for s in gens)


def test_each_rewards_own_values_are_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    folder = tiny_head_model(tmp_path, LlamaForSequenceClassification, labels=1)
    rewards = [
        {"name": "online_rewards:digit_share", "weight": 2.0},
        {"name": "reward_model", "weight": 0.5, "params": {"path": str(folder)}},
        {"name": "online_rewards:digit_share", "weight": -1.0},
    ]
    path = make_config(tmp_path, online={"rewards": rewards})
    result = Trainer(load_config(path, ["train.max_steps=1"])).train()
    (rollouts,) = seen["rollouts"]
    parts = rollouts.parts
    assert list(parts) == ["digit_share", "reward_model", "digit_share_3"]
    total = 2 * parts["digit_share"] + 0.5 * parts["reward_model"] - parts["digit_share_3"]
    torch.testing.assert_close(rollouts.rewards, total)
    for label, values in parts.items():
        logged = result.history[0][f"rollout/reward/{label}/mean"]
        assert logged == pytest.approx(float(values.mean()))
        assert result.history[0][f"rollout/reward/{label}/std"] == pytest.approx(
            float(values.std())
        )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "online.rewards[0].params.path: process_reward_model needs the model's folder"),
        ({"path": "SEQ"}, "is a LlamaForSequenceClassification, not a token-classification"),
        ({"path": "TOK", "reduce": "max"}, "reduce: expected one of min, last, mean"),
        ({"path": "TOK", "batch_size": 0}, "batch_size: expected a whole number >= 1"),
        ({"path": "TOK", "temperature": 1}, "temperature: not a parameter of reward"),
        ({"path": "TOK", "step_separator": ""}, "step_separator: expected a non-empty string"),
        ({"path": "TOK", "format": "math_shepherd"}, "not a causal-LM reward model"),
        (
            {"path": "LM", "format": "math_shepherd", "good_token": "good"},
            "good_token: 'good' encodes to",
        ),
        ({"path": "LM", "format": "shepherd"}, "format: expected one of trl, math_shepherd"),
    ],
)
def test_misconfigured_reward_models_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], params: dict, expected: str
) -> None:
    sequence = tiny_head_model(tmp_path, LlamaForSequenceClassification, labels=1)
    token = tiny_head_model(tmp_path, LlamaForTokenClassification, labels=2)
    lm = tmp_path / "lm"
    build_tiny_model(build_tokenizer()).save_pretrained(lm)
    build_tokenizer().save_pretrained(lm)
    folders = {"SEQ": str(sequence), "TOK": str(token), "LM": str(lm)}
    spelled = {k: folders.get(v, v) for k, v in params.items()}
    rewards = [{"name": "process_reward_model", "params": spelled}]
    path = make_config(tmp_path, online={"rewards": rewards})
    capsys.readouterr()  # saving the models above wrote progress bars
    assert main(["train", str(path), "train.max_steps=1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err


def test_prm_steps_in_multi_turn_episodes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tiny_head_model(tmp_path, LlamaForTokenClassification, labels=2)
    prm = {"name": "process_reward_model", "params": {"path": str(token), "reduce": "steps"}}
    environment = {"name": "online_environments:DigitTurns", "max_turn_tokens": 4}
    path = write_config(tmp_path, environment, rewards=[{"name": "environment"}, prm])
    capsys.readouterr()
    assert main(["train", str(path), "train.max_steps=1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "reduce: steps places a PRM's step scores" in err[0], err


# ------------------------------------------------------------------------ process supervision
def test_without_step_rewards_process_grpo_is_outcome_grpo() -> None:
    from batches import rl_batch

    batch = rl_batch(num_groups=3, group_size=4, width=10, seed=1)
    rows = torch.ones(batch.num_rows, dtype=torch.bool)
    process = ADVANTAGES.build("grpo_process").compute(batch, rows, None).values  # type: ignore[arg-type]
    outcome = ADVANTAGES.build("grpo").compute(batch, rows, None).values  # type: ignore[arg-type]
    torch.testing.assert_close(process, outcome.unsqueeze(-1) * batch.mask)


def test_a_zero_step_reward_is_still_a_step() -> None:
    """Two rows, one step each besides the last: a step of 0 changes the group's statistics."""
    mask = torch.ones(2, 4, dtype=torch.float64)
    base = Batch(
        logprobs=torch.zeros(2, 4, dtype=torch.float64),
        mask=mask,
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0]),
    )
    ends = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    with_zero = base.replace(step_rewards=torch.zeros_like(mask), step_ends=ends)
    rows = torch.ones(2, dtype=torch.bool)
    advantage = ADVANTAGES.build("grpo_process")
    plain = advantage.compute(base, rows, None).values  # type: ignore[arg-type]
    zero = advantage.compute(with_zero, rows, None).values  # type: ignore[arg-type]
    assert not torch.allclose(plain, zero)
    # Steps (row 0): 0 at t=1, 1 at t=3; (row 1): 0 at t=3. Mean 1/3, std sqrt(1/3).
    mean, std = 1 / 3, (1 / 3) ** 0.5
    r = [(x - mean) / (std + 1e-6) for x in (0.0, 1.0, 0.0)]
    want = torch.tensor([[r[0] + r[1]] * 2 + [r[1]] * 2, [r[2]] * 4], dtype=torch.float64)
    torch.testing.assert_close(zero, want)


def test_process_grpo_learns_from_turn_rewards(tmp_path: Path) -> None:
    environment = {"name": "online_environments:DigitTurns", "max_turn_tokens": 4}
    path = write_config(tmp_path, environment)
    overrides = ["algorithm.name=grpo_process", "train.max_steps=12"]
    result = Trainer(load_config(path, overrides)).train()
    earned = [h["rollout/turn_reward"] for h in result.history if "rollout/turn_reward" in h]
    first, last = sum(earned[:3]) / 3, sum(earned[-3:]) / 3
    assert last > 1.5 * first and last > first + 0.15, earned


class NaNStepScorer:
    """A PRM stand-in whose second step of the second completion scores NaN."""

    def __call__(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        return [[0.9, 0.8], [0.7, float("nan")]]

    def steps(self, completion: str) -> list[Any]:
        return split_steps(completion, "\n")


def test_a_nan_step_score_is_one_line_even_under_min(tmp_path: Path) -> None:
    """min() passes over NaN, so the check reads every step's score, not the reduced one."""
    from alignlib.rewards import RewardError
    from alignlib.rewards.learned import LearnedReward

    folder = tiny_head_model(tmp_path, LlamaForTokenClassification, labels=2)
    reward = LearnedReward.checked("process_reward_model", {"path": str(folder)}, "k")
    reward.scorer = NaNStepScorer()  # type: ignore[assignment]
    with pytest.raises(RewardError, match=r"'process_reward_model': completion 1 scored nan"):
        reward.score(["p", "p"], ["a\nb", "c\nd"])
    rewards, _ = reward.score(["p", "p"], ["a\nb", "c\nd"], allow_nonfinite=True)
    assert rewards[0] == pytest.approx(0.8)
