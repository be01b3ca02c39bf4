"""Multi-turn episodes (alignlib.rollout.environment): each turn continues the exact tokens of
the episode so far, environment tokens carry loss mask 0 and no gradient, budgets and turn
limits hold, async steps run concurrently, user-code failures are one line; on a real model the
episode's log-probs are the trainer's own; GRPO learns a reward that only the turn after an
observation earns; the calculator evaluates arithmetic and nothing else."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path
from typing import Any

import online_environments as envs
import pytest
import torch
import yaml
from closed_forms_frontier import advantages
from test_online import make_config

from alignlib.algorithms import get as get_preset
from alignlib.cli import main
from alignlib.config import load_config
from alignlib.estimator import Batch, Role
from alignlib.rollout.base import Generation, NamedTensors, Prompts, RolloutEngine, SamplingParams
from alignlib.rollout.calculator import Calculator, evaluate
from alignlib.rollout.environment import (
    EpisodeError,
    EpisodeRunner,
    EpisodeSettings,
    available_environments,
    resolve_environment,
)
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.logprobs import token_logprobs
from alignlib.trainer.loop import Trainer
from alignlib.trainer.online_rollout import TrainRows
from alignlib.trainer.online_update import collate_rows

pytestmark = pytest.mark.usefixtures("one_thread")
TOKENIZER = build_tokenizer()
WORDS = TOKENIZER.encode(" one two three four five six seven eight nine")


def scripted_turn(
    prompt: list[int], sample: int, sampling: SamplingParams, length: int
) -> list[int]:
    """ScriptedEngine's turn: tokens picked from the prompt's length, the sample and the seed."""
    start = len(prompt) + sample + (sampling.seed or 0)
    return [WORDS[(start + k) % len(WORDS)] for k in range(min(length, sampling.max_new_tokens))]


class ScriptedEngine(RolloutEngine):
    """Deterministic turns (``scripted_turn``) with log-probs −0.1·(k+1); records every call."""

    def __init__(self, length: int = 3) -> None:
        self.length = length
        self.calls: list[tuple[list[list[int]], SamplingParams]] = []

    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        ids = [list(p) for p in prompts]  # type: ignore[arg-type]
        self.calls.append((ids, sampling))
        out = []
        for i, prompt in enumerate(ids):
            gens = []
            for s in range(sampling.n):
                tokens = scripted_turn(prompt, s, sampling, self.length)
                reason = "length" if len(tokens) == sampling.max_new_tokens else "stop"
                logprobs = [-0.1 * (k + 1) for k in range(len(tokens))]
                gens.append(Generation(i, prompt, tokens, "", logprobs, reason, s))  # type: ignore[arg-type]
            out.append(gens)
        return out

    def update_weights(self, weights: NamedTensors) -> None:
        pass


def runner(factory: Any = envs.Fixed, **settings: Any) -> EpisodeRunner:
    return EpisodeRunner(factory, {}, TOKENIZER, EpisodeSettings(**settings), "test-env")


def prompts() -> tuple[list[list[int]], list[dict[str, Any]]]:
    rows = [{"prompt": "What is 2 + 3?", "answer": "5"}, {"prompt": "Add 4 and 4.", "answer": "8"}]
    return [TOKENIZER.encode(r["prompt"]) for r in rows], rows


def test_each_turn_continues_the_exact_tokens_and_only_sampled_tokens_are_trained() -> None:
    engine, (ids, rows) = ScriptedEngine(), prompts()
    observation = TOKENIZER.encode(" result: 7 ")
    out = runner(max_turns=3).run(engine, ids, rows, SamplingParams(n=2, max_new_tokens=64, seed=5))
    assert [len(gens) for gens in out] == [2, 2]
    assert len(engine.calls) == 3  # one generate call per turn, every episode in it
    for p, gens in enumerate(out):
        for s, gen in enumerate(gens):
            assert (gen.prompt_index, gen.sample_index, gen.turns) == (p, s, 3)
            context, expected, mask = ids[p], [], []
            for turn, (call_prompts, sampling) in enumerate(engine.calls):
                assert context in call_prompts  # the turn continued the episode token for token
                tokens = scripted_turn(context, s if turn == 0 else 0, sampling, 3)
                shown = observation if turn < 2 else []
                expected += tokens + shown
                mask += [1] * len(tokens) + [0] * len(shown)
                context = context + tokens + shown
            assert gen.token_ids == expected and gen.loss_mask == mask
            sampled = [lp for lp, m in zip(gen.logprobs, mask, strict=True) if m]
            assert sampled == pytest.approx([-0.1, -0.2, -0.3] * 3)
            assert all(lp == 0 for lp, m in zip(gen.logprobs, mask, strict=True) if not m)
            assert gen.text == TOKENIZER.decode(expected, skip_special_tokens=True)


def test_the_environment_sees_every_turn_and_its_row() -> None:
    seen: list[envs.Fixed] = []

    def factory() -> envs.Fixed:
        seen.append(envs.Fixed())
        return seen[-1]

    factory.step = envs.Fixed.step  # type: ignore[attr-defined]
    ids, rows = prompts()
    runner(factory, max_turns=2).run(ScriptedEngine(), ids, rows, SamplingParams(n=3))
    assert len(seen) == 6  # one fresh environment per episode
    assert [env.row for env in seen] == [rows[0]] * 3 + [rows[1]] * 3
    assert all(len(env.turns) == 2 for env in seen)  # the last turn too (its answer dropped)


def test_budget_turn_cap_and_an_observation_that_does_not_fit() -> None:
    ids, rows = prompts()
    observation = len(TOKENIZER.encode(" result: 7 "))
    # A per-turn cap of 2: every turn is cut, the environment still answers, episodes go on.
    capped = runner(max_turns=3, max_turn_tokens=2).run(
        ScriptedEngine(length=5), ids, rows, SamplingParams(n=1, max_new_tokens=64)
    )
    for gens in capped:
        assert gens[0].turns == 3 and sum(gens[0].loss_mask or []) == 6
    # Room for one turn and one observation, but not for an answer after it.
    tight = 3 + observation
    out = runner(max_turns=3).run(
        ScriptedEngine(), ids, rows, SamplingParams(n=1, max_new_tokens=tight)
    )
    for gens in out:
        gen = gens[0]
        assert gen.turns == 1 and len(gen.token_ids) == 3 and gen.finish_reason == "length"
    # A budget that ends inside the second turn: cut there, never past it.
    out = runner(max_turns=5).run(
        ScriptedEngine(), ids, rows, SamplingParams(n=1, max_new_tokens=3 + observation + 2)
    )
    for gens in out:
        gen = gens[0]
        assert len(gen.token_ids) == 3 + observation + 2 and gen.finish_reason == "length"


def test_turn_seeds_differ_and_repeat() -> None:
    ids, rows = prompts()
    first, second = ScriptedEngine(), ScriptedEngine()
    for engine in (first, second):
        runner(max_turns=3).run(engine, ids, rows, SamplingParams(n=2, seed=11))
    seeds = [sampling.seed for _, sampling in first.calls]
    assert seeds == [sampling.seed for _, sampling in second.calls]
    assert len(set(seeds)) == 3 and seeds[0] == 11
    assert all(sampling.n == 1 for _, sampling in first.calls[1:])


def test_async_steps_of_a_turn_are_awaited_together() -> None:
    envs.AwaitsAll.started, envs.AwaitsAll.expected = 0, 8
    ids, rows = prompts()
    out = runner(envs.AwaitsAll).run(ScriptedEngine(), ids, rows, SamplingParams(n=4))
    assert all(g.turns == 1 for gens in out for g in gens)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            envs.Raises,
            "environment 'test-env': step raised RuntimeError: sandbox unreachable "
            "(prompt 0, turn 1); fix the environment",
        ),
        (
            envs.ReturnsNumber,
            "environment 'test-env': step returned int for prompt 0; return "
            "the observation as a str (or a list of str), or None to end the episode",
        ),
        (
            envs.ResetSpeaks,
            "environment 'test-env': an environment's reset returned a first observation, and "
            "these prompts are token ids with no way to re-encode them",
        ),
        (envs.ResetReturnsNumber, "environment 'test-env': reset returned int for prompt 0"),
    ],
)
def test_environment_failures_are_one_line(factory: Any, message: str) -> None:
    ids, rows = prompts()
    with pytest.raises(EpisodeError) as caught:
        runner(factory).run(ScriptedEngine(), ids, rows, SamplingParams(n=1))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_environment_names_resolve_with_clear_errors() -> None:
    assert "calculator" in available_environments()
    assert resolve_environment("calculator") is Calculator
    assert resolve_environment("online_environments:Fixed") is envs.Fixed
    with pytest.raises(
        EpisodeError, match=r"unknown environment 'calculater' \(did you mean 'calculator'"
    ):
        resolve_environment("calculater")
    with pytest.raises(ValueError, match="has no attribute 'Nope'; check the class name"):
        resolve_environment("online_environments:Nope")
    with pytest.raises(EpisodeError, match="is not an environment class: it needs a step"):
        resolve_environment("json:dumps")


def test_chat_observations_are_template_turns() -> None:
    encode = runner(observation_format="chat", observation_role="tool").observation
    text = TOKENIZER.decode(encode("7"))
    assert text == "\n<|im_start|>tool\n7<|im_end|>\n<|im_start|>assistant\n"
    cut = runner(max_observation_tokens=2).observation(" one two three four")
    assert len(cut) == 2


# ------------------------------------------------------------------------- the training rows
def episode_rows() -> tuple[TrainRows, list[Generation]]:
    ids, rows = prompts()
    out = runner(max_turns=3).run(
        ScriptedEngine(), ids, rows, SamplingParams(n=3, max_new_tokens=64)
    )
    train = TrainRows()
    for p, gens in enumerate(out):
        for s, gen in enumerate(gens):
            reward = float((p + s) % 2)
            train.add(ids[p], gen.token_ids, Role.SAMPLE, p, reward, gen.logprobs, gen.loss_mask)
    return train, [g for gens in out for g in gens]


def test_environment_tokens_get_no_gradient_grpo_closed_form() -> None:
    """GRPO's gradient through the collated rows equals the float64 closed form over the sampled
    tokens alone: −A_i / (n_i · rows) at each, exactly 0 at every environment token."""
    rows, generations = episode_rows()
    tensors = collate_rows(rows, pad_id=0)
    gen = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(tensors.input_ids.shape, generator=gen, dtype=torch.float64)
    batch = Batch(
        logprobs=logprobs.clone().requires_grad_(True),
        mask=tensors.mask.double(),
        old_logprobs=logprobs.clone(),
        rewards=tensors.rewards.double(),
        group_ids=tensors.group_ids,
        roles=tensors.roles,
    )
    get_preset("grpo")(batch).loss.backward()
    adv = advantages(batch)
    expected = torch.zeros_like(logprobs)
    for r, (start, generation) in enumerate(zip(rows.starts, generations, strict=True)):
        sampled = [start + t for t, m in enumerate(generation.loss_mask or []) if m]
        for position in sampled:
            expected[r, position] = -adv[r] / (len(sampled) * len(generations))
    assert batch.logprobs.grad is not None
    torch.testing.assert_close(batch.logprobs.grad, expected, rtol=1e-12, atol=1e-15)
    inserted = tensors.attention.bool() & ~tensors.mask.bool()
    assert inserted.sum() > 0 and batch.logprobs.grad[inserted].abs().max() == 0


def test_episode_logprobs_are_the_trainers_on_a_real_model() -> None:
    """The transformers engine's log-prob of every sampled token of a 3-turn episode equals the
    trainer's forward over the whole episode: each turn saw exactly the episode's tokens."""
    from alignlib.rollout.hf_engine import HFEngine

    model = build_tiny_model(TOKENIZER, hidden=32, layers=2, seed=3, init_std=0.3)
    engine = HFEngine(model, TOKENIZER, max_batch_size=4)
    ids, rows = prompts()
    out = runner(max_turns=3, max_turn_tokens=5).run(
        engine, ids, rows, SamplingParams(n=2, max_new_tokens=40, seed=1)
    )
    checked = 0
    for p, gens in enumerate(out):
        for gen in gens:
            sequence = torch.tensor([ids[p] + gen.token_ids])
            with torch.no_grad():
                trainer, _ = token_logprobs(model, sequence, torch.ones_like(sequence))
            start = len(ids[p])
            for t, (lp, m) in enumerate(zip(gen.logprobs, gen.loss_mask or [], strict=True)):
                if m:
                    assert abs(float(trainer[0, start + t]) - lp) < 1e-4
                    checked += 1
            assert gen.turns > 1
    assert checked > 20


# ------------------------------------------------------------------------------- training
def write_config(tmp: Path, environment: dict[str, Any], **online: Any) -> Path:
    """test_online's tiny GRPO run, with episodes rewarded by the environment."""
    return make_config(
        tmp,
        rollout={"n": 8, "max_new_tokens": 12},
        online={
            "prompts_per_step": 8,
            "micro_batch_size": 64,
            "rewards": [{"name": "environment"}],
            "environment": environment,
            **online,
        },
    )


def test_grpo_learns_a_reward_only_the_turn_after_the_observation_earns(tmp_path: Path) -> None:
    environment = {"name": "online_environments:ScoreLastTurn", "max_turn_tokens": 4}
    config = load_config(write_config(tmp_path, environment), ["train.max_steps=16"])
    result = Trainer(config).train()
    rewards = [h["rollout/reward_mean"] for h in result.history]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > 2 * first and last > first + 0.15, rewards
    assert all(
        h["rollout/turns"] > 1.5 and h["rollout/observation_tokens"] > 0 for h in result.history
    )


def test_heldout_accuracy_runs_the_same_episodes(tmp_path: Path) -> None:
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}) + "\n")
    environment = {"name": "online_environments:ScoreLastTurn", "max_turn_tokens": 4}
    path = write_config(tmp_path, environment, heldout={"data": str(heldout), "every": 1})
    result = Trainer(load_config(path, ["train.max_steps=1"])).train()
    # Greedy episodes: turn, observation (" 7 "), turn: longer than one 4-token turn.
    heldout = [h for h in result.history if "heldout/accuracy" in h]
    assert heldout and all(h["heldout/response_length"] > 4 for h in heldout)
    assert all(h["heldout/turns"] == 2 for h in heldout)


@pytest.mark.parametrize(
    ("environment", "rewards", "message"),
    [
        (
            None,
            [{"name": "environment"}],
            "online.rewards[0].name: environment is the episode reward of a multi-turn environment",
        ),
        (
            {"name": "online_environments:Rewarding"},
            [{"name": "math"}],
            "online.environment: online_environments:Rewarding defines get_reward(), which no "
            "reward reads",
        ),
        (
            {"name": "calculator", "params": {"max_call": 2}},
            [{"name": "math"}],
            "online.environment.params: calculator does not take ['max_call']",
        ),
        ({"name": "calculater"}, [{"name": "math"}], "unknown environment 'calculater'"),
    ],
)
def test_misconfigured_environments_are_refused_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], environment: Any, rewards: Any, message: str
) -> None:
    path = write_config(tmp_path, environment or {"name": "calculator"}, rewards=rewards)
    if environment is None:
        cfg = yaml.safe_load(path.read_text())
        del cfg["online"]["environment"]
        path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------- the calculator
def random_expression(rng: random.Random, depth: int = 3) -> str:
    if depth == 0 or rng.random() < 0.3:
        return str(rng.choice([rng.randint(0, 50), round(rng.uniform(0, 9), 2)]))
    op = rng.choice(["+", "-", "*", "/", "//", "%", "**"])
    left, right = random_expression(rng, depth - 1), random_expression(rng, depth - 1)
    if op == "**":
        right = str(rng.randint(0, 3))
    return f"({left} {op} {right})"


def test_calculator_agrees_with_python_arithmetic() -> None:
    rng, compared = random.Random(0), 0
    for _ in range(400):
        expression = random_expression(rng)
        try:
            want = eval(compile(ast.parse(expression, mode="eval"), "<test>", "eval"))
        except (ZeroDivisionError, OverflowError):
            continue
        if isinstance(want, complex) or abs(want) > 1e30:
            continue
        assert evaluate(expression) == pytest.approx(want, rel=1e-12), expression
        compared += 1
    assert compared > 300


@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('true')", "x + 1", "[1, 2]", "2 ** 1000", "1 / 0", "9" * 300, "f(2)"],
)
def test_calculator_refuses_anything_but_bounded_arithmetic(expression: str) -> None:
    with pytest.raises(ValueError):
        evaluate(expression)


def test_calculator_answers_the_last_call_and_ends_without_one() -> None:
    calc = Calculator(max_calls=2)
    calc.reset(prompt="p", answer="1")
    assert calc.step("so <calculator>1+1</calculator> and <calculator>(3+4)*12</calculator>") == (
        "<result>84</result>"
    )
    assert calc.step("<calculator>7/2</calculator>") == "<result>3.5</result>"
    assert calc.step("<calculator>1+1</calculator>") is None  # max_calls reached
    assert Calculator().step("The answer is \\boxed{5}.") is None
    assert (
        Calculator().step("<calculator>1/0</calculator>")
        == "<result>error: division by zero</result>"
    )
    assert Calculator.stop == ("</calculator>",)


def test_environment_rewards_do_not_score_demonstrations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"name": "online_environments:Rewarding"})
    assert main(["train", str(path), "algorithm.name=luffy"]) == 2
    err = capsys.readouterr().err
    assert "scores demonstrations, which no environment played" in err, err


@pytest.mark.slow
def test_ray_rollout_workers_run_episodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Episodes through two Ray rollout workers: each turn is one sharded generate call."""
    import alignlib.trainer.online as online

    seen: list[TrainRows] = []
    collate = online.collate_rows

    def spy(rows: TrainRows, pad_id: int) -> Any:
        seen.append(rows)
        return collate(rows, pad_id)

    monkeypatch.setattr(online, "collate_rows", spy)
    environment = {"name": "online_environments:ScoreLastTurn", "max_turn_tokens": 4}
    path = write_config(tmp_path, environment)
    result = Trainer(load_config(path, ["rollout.num_workers=2", "rollout.n=4"])).train()
    assert all(h["rollout/turns"] > 1.5 for h in result.history)
    masks = [m for rows in seen for m in rows.loss_masks]
    assert masks and all(m is not None and 0 in m for m in masks)


def test_eval_answers_each_problem_in_episodes(tmp_path: Path) -> None:
    from alignlib.eval.config import EvalConfig
    from alignlib.eval.runner import evaluate

    bench = tmp_path / "sums.jsonl"
    rows = [{"problem": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(3)]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = build_tiny_model(TOKENIZER, hidden=32, layers=2, seed=0)
    environment = {"name": "online_environments:Fixed", "max_turns": 2, "max_turn_tokens": 4}
    config = EvalConfig(
        benchmarks=[str(bench)], n=2, max_new_tokens=20, environment=environment, seed=1
    )
    report = evaluate(config, model, TOKENIZER)
    (records,) = report.records.values()
    observation = len(TOKENIZER.encode(" result: 7 "))
    for record in records:
        for gen in [record["greedy"], *record["samples"]]:
            assert gen["turns"] == 2 and gen["num_tokens"] > observation
            assert "result: 7" in gen["text"] and "environment_reward" not in gen
    # An environment's reward (here turn rewards: turn k earns k/2) is kept in the records.
    rewarded = EvalConfig(
        benchmarks=[str(bench)],
        n=1,
        max_new_tokens=20,
        environment={**environment, "name": "online_environments:TurnRewards"},
        seed=1,
    )
    (records,) = evaluate(rewarded, model, TOKENIZER).records.values()
    assert all(r["greedy"]["environment_reward"] == 1.5 for r in records)  # 0.5 + 1.0


def test_eval_runs_each_row_in_the_environment_it_names(tmp_path: Path) -> None:
    from alignlib.eval.config import EvalConfig
    from alignlib.eval.runner import evaluate

    bench = tmp_path / "mixed.jsonl"
    rows = [
        {"problem": f"What is {a} + 1?", "answer": str(a + 1), "env": "turns" if a % 2 else "fixed"}
        for a in range(4)
    ]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = build_tiny_model(TOKENIZER, hidden=32, layers=2, seed=0)
    settings = {"max_turns": 2, "max_turn_tokens": 4}
    environments = {
        "fixed": {"name": "online_environments:Fixed", **settings},
        "turns": {"name": "online_environments:TurnRewards", **settings},
    }
    config = EvalConfig(
        benchmarks=[str(bench)],
        n=1,
        max_new_tokens=20,
        environments=environments,
        environment_field="env",
        seed=1,
    )
    (records,) = evaluate(config, model, TOKENIZER).records.values()
    for row, record in zip(rows, records, strict=True):
        greedy = record["greedy"]
        assert greedy["turns"] == 2 and "result: 7" in greedy["text"]
        # TurnRewards earns 0.5 + 1.0; Fixed gives none, so 0 beside a rewarding one.
        assert greedy["environment_reward"] == (1.5 if row["env"] == "turns" else 0.0)
    bench.write_text(json.dumps({**rows[0], "env": "turn"}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: .*did you mean 'turns'.*eval\.environments"):
        evaluate(config, model, TOKENIZER)
    with pytest.raises(ValueError, match="both set"):
        EvalConfig(
            benchmarks=[str(bench)], environment=environments["fixed"], environments=environments
        )


def test_eval_refuses_an_unknown_environment_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "--model", str(tmp_path / "absent"), "--environment", "calculater"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown environment 'calculater'" in err, err


def test_an_environment_without_rollouts_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"name": "calculator"}, rewards=[{"name": "math"}])
    cfg = yaml.safe_load(path.read_text())
    del cfg["rollout"]
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "online.environment plays episodes with rollouts" in err, err


@pytest.mark.parametrize("algorithm", ["grpo", "gigpo"])
def test_packing_mini_batches_and_correction_read_the_holes_alike(
    tmp_path: Path, algorithm: str
) -> None:
    """Episodes whose masks have holes train the same padded or packed, in two mini-batches,
    with a rollout correction reading the engine's log-probs (0 at environment tokens); GiGPO's
    turn states and entropy bonus too."""
    environment = {"name": "online_environments:ScoreLastTurn", "max_turn_tokens": 4}
    path = write_config(
        tmp_path, environment, mini_batches=2, rollout_correction={"mode": "tis", "cap": 2}
    )
    first_steps = []
    for packing in (False, True):
        overrides = ["train.max_steps=1", f"train.packing={str(packing).lower()}"]
        overrides.append(f"algorithm.name={algorithm}")
        overrides.append(f"output_dir={tmp_path / f'packing-{packing}'}")
        result = Trainer(load_config(path, overrides)).train()
        first_steps.append(result.history[0])
    padded, packed = first_steps
    assert padded["rollout/turns"] == packed["rollout/turns"] > 1.5
    for key in ("loss", "grad_norm", "rollout/reward_mean"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-7), key


def test_the_guessing_game_example_plays_and_trains() -> None:
    import subprocess
    import sys

    folder = Path(__file__).parents[1] / "examples"
    sys.path.insert(0, str(folder))
    try:
        import environment_guess as envs_guess
        from environment_guess import GuessTheNumber
    finally:
        sys.path.remove(str(folder))
    game = GuessTheNumber()
    game.reset(prompt="Guess.", secret=7)
    assert [game.step("3"), game.step("maybe 12?"), game.step("no idea")] == [
        " higher\n",
        " lower\n",
        " Say a number.\n",
    ]
    assert game.step("it is 7") is None and game.get_reward() == 0.25
    hinted = envs_guess.GuessWithTurnRewards()
    hinted.reset(prompt="Guess.", secret=7)
    assert [hinted.step("2"), hinted.step("9"), hinted.step("hmm"), hinted.step("8")] == [
        (" higher\n", 0.0),
        (" lower\n", 0.1),  # 9 is closer to 7 than 2 was
        (" Say a number.\n", -0.1),
        (" lower\n", 0.1),
    ]
    done = subprocess.run(
        [sys.executable, "environment_guess.py"], cwd=folder, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "environment tokens" in done.stdout and "trained 2 steps" in done.stdout
    assert "rollout/turn_reward" in done.stdout
