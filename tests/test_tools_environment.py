"""The `tools` environment: Hermes-format tool calls parsed and run on Python functions (async
ones awaited), errors answered to the model, results rendered as tool turns of the chat template,
the functions' schemas shown in the prompt; a template without a tool list is refused."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import online_environments as envs
import pytest
import yaml

from alignlib.cli import main
from alignlib.data.collate import prompt_ids
from alignlib.rewards import RewardError
from alignlib.rollout.base import Generation, NamedTensors, Prompts, RolloutEngine, SamplingParams
from alignlib.rollout.environment import EpisodeRunner, EpisodeSettings
from alignlib.rollout.observations import ObservationError
from alignlib.rollout.tools import FunctionTools, parse_tool_calls
from alignlib.testing import build_tokenizer

# Qwen2.5's layout, reduced: the tool list in a system turn, tool results as user turns.
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = copy.deepcopy(build_tokenizer())  # the builder's instance is shared: never mutate it
    tok.chat_template = TOOL_TEMPLATE
    return tok


CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


def test_tool_calls_are_parsed_or_explained() -> None:
    two = (
        CALL + ' and <tool_call>{"name": "lookup", "arguments": "{\\"key\\": \\"x\\"}"}</tool_call>'
    )
    assert parse_tool_calls(two) == [
        {"name": "add", "arguments": {"a": 2, "b": 3}},
        {"name": "lookup", "arguments": {"key": "x"}},
    ]
    assert parse_tool_calls("no call here") == []
    bad = parse_tool_calls("<tool_call>{oops}</tool_call><tool_call>[1]</tool_call>")
    assert bad[0].startswith("the tool call is not JSON") and bad[1].startswith("a tool call is")
    assert parse_tool_calls('<tool_call>{"name": "add", "arguments": 3}')[0] == (
        "the arguments of add must be a JSON object"
    )


def test_functions_run_and_failures_are_told_to_the_model() -> None:
    tools = FunctionTools(["online_environments:add", envs.lookup], max_calls=3)
    tools.reset(prompt="p")
    assert tools.step(CALL) == ["5"]
    lookup = '<tool_call>{"name": "lookup", "arguments": {"key": "k"}}</tool_call>'
    assert tools.step(lookup) == ["value of k"]  # awaited
    tools.reset()
    wrong = '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    missing = '<tool_call>{"name": "mul", "arguments": {}}</tool_call>'
    (answer_wrong,) = tools.step(wrong) or []
    (answer_missing,) = tools.step(missing) or []
    assert json.loads(answer_wrong)["error"].startswith("TypeError")
    assert json.loads(answer_missing) == {"error": "no tool named 'mul'; tools: add, lookup"}
    assert tools.step(CALL) == ["5"]
    assert tools.step(CALL) is None  # max_calls reached
    assert FunctionTools([envs.add]).step("The answer is 5.") is None


class ReplayEngine(RolloutEngine):
    """Answers turn k of every prompt with ``turns[k]``; records the prompts it was given."""

    def __init__(self, tokenizer: Any, turns: list[str]) -> None:
        self.tokenizer, self.turns, self.prompts = tokenizer, turns, []  # type: ignore[var-annotated]
        self.eos = tokenizer.eos_token_id

    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        turn = self.turns[len(self.prompts)]
        self.prompts.append([list(p) for p in prompts])  # type: ignore[arg-type]
        ids = [*self.tokenizer.encode(turn), self.eos]
        return [
            [
                Generation(i, list(p), ids, turn, [-0.5] * len(ids), "stop", s)  # type: ignore[arg-type]
                for s in range(sampling.n)
            ]
            for i, p in enumerate(prompts)
        ]

    def update_weights(self, weights: NamedTensors) -> None:
        pass


def test_a_tool_episode_in_the_chat_format(tokenizer: Any) -> None:
    answer = "The answer is \\boxed{5}."
    engine = ReplayEngine(tokenizer, [CALL, answer])
    runner = EpisodeRunner.named(
        "tools",
        {"functions": ["online_environments:add"]},
        tokenizer,
        max_turns=3,
        observation_format="chat",
        observation_role="tool",
    )
    (gens,) = runner.run(engine, ["What is 2 + 3?"], [{"prompt": "p"}], SamplingParams(n=2))
    first_prompt = tokenizer.decode(engine.prompts[0][0])
    assert '<tools>{"type": "function", "function": {"name": "add"' in first_prompt
    answer_ids = [*tokenizer.encode(answer), tokenizer.eos_token_id]
    for gen in gens:
        assert gen.turns == 2 and gen.finish_reason == "stop" and gen.text.endswith(answer)
        inserted = [t for t, m in zip(gen.token_ids, gen.loss_mask or [], strict=True) if not m]
        shown = tokenizer.decode(inserted)
        assert shown.startswith("<|im_start|>user\n<tool_response>\n5\n</tool_response>")
        assert shown.endswith("<|im_start|>assistant")
        # The answer turn continued the call and the tool turn, token for token.
        assert gen.prompt_ids + gen.token_ids[: -len(answer_ids)] in engine.prompts[1]


def test_the_prompt_shows_the_tools_and_a_template_without_them_is_refused(
    tokenizer: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tokenizer.decode(prompt_ids(tokenizer, "What is 2 + 3?", True, [envs.add]))
    assert '"description": "Add two integers."' in text
    plain = build_tokenizer()  # ChatML without a tool list
    runner = EpisodeRunner(FunctionTools, {"functions": [envs.add]}, plain, EpisodeSettings())
    with pytest.raises(ObservationError, match="does not show a tool list"):
        runner.tools  # noqa: B018
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2 + 3?", "answer": "5"}) + "\n")
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data)},
        "algorithm": {"name": "grpo"},
        "train": {"max_steps": 1},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
        "rollout": {"n": 2, "max_new_tokens": 8},
        "online": {
            "prompts_per_step": 1,
            "environment": {"name": "tools", "params": {"functions": ["online_environments:add"]}},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "does not show a tool list" in err and len(err.strip().splitlines()) == 1, err


def test_a_prompt_whose_tool_list_would_be_cut_is_refused(tokenizer: Any, tmp_path: Path) -> None:
    from alignlib.algorithms import get as get_preset
    from alignlib.algorithms import router_for
    from alignlib.config import load_config
    from alignlib.trainer.online_collect import RolloutCollector

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2 + 3?", "answer": "5"}) + "\n")
    config = {
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data)},
        "rollout": {"n": 2},
        "online": {
            "prompts_per_step": 1,
            "environment": {"name": "tools", "params": {"functions": ["online_environments:add"]}},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    run = load_config(path)
    collector = RolloutCollector(run, tokenizer, router_for(get_preset("grpo"), run.online))
    full = collector.prompt_tokens({"prompt": "What is 2 + 3?"})
    assert '"name": "add"' in tokenizer.decode(full)
    short = load_config(path, [f"online.max_prompt_length={len(full) - 1}"])
    collector = RolloutCollector(short, tokenizer, router_for(get_preset("grpo"), short.online))
    with pytest.raises(ValueError, match="cutting it would drop the tools"):
        collector.prompt_tokens({"prompt": "What is 2 + 3?"})


def test_eval_with_tools_shows_them_and_needs_the_chat_template(
    tokenizer: Any, tmp_path: Path
) -> None:
    from alignlib.eval.config import EvalConfig
    from alignlib.eval.runner import evaluate

    bench = tmp_path / "sums.jsonl"
    bench.write_text(json.dumps({"problem": "What is 2 + 3?", "answer": "5"}) + "\n")
    tools = {
        "name": "tools",
        "params": {"functions": ["online_environments:add"]},
        "observation_format": "chat",
    }
    config = EvalConfig(benchmarks=[str(bench)], max_new_tokens=256, environment=tools)
    engine = ReplayEngine(tokenizer, [CALL, "So \\boxed{5}."])
    report = evaluate(config, engine=engine)
    (records,) = report.records.values()
    assert '"name": "add"' in tokenizer.decode(engine.prompts[0][0])  # the schema in the prompt
    greedy = records[0]["greedy"]
    assert greedy["turns"] == 2 and greedy["correct"] and "<tool_response>" in greedy["text"]
    refused = config.model_copy(update={"chat_template": False})
    with pytest.raises(ValueError, match="chat_template is false"):
        evaluate(refused, engine=ReplayEngine(tokenizer, [CALL]))


def test_a_trl_environment_class_runs_unchanged(tokenizer: Any) -> None:
    """TRL's environment_factory form: the class's public methods are the tools, called on each
    episode's own instance; its async get_reward is the episode's reward."""
    from alignlib.rollout.environments import EpisodeError, gives_rewards, resolve_environment

    factory = resolve_environment("online_environments:TrlAdder")
    assert gives_rewards(factory)
    assert list(inspect.signature(factory).parameters) == ["target_field"]  # params checked
    assert not gives_rewards(resolve_environment("online_environments:TrlAdderUnrewarded"))
    with pytest.raises(EpisodeError, match="public methods that are its tools"):
        resolve_environment("online_environments:NoTools")
    answer = "The answer is \\boxed{5}."
    engine = ReplayEngine(tokenizer, [CALL, answer])
    runner = EpisodeRunner.named(
        "online_environments:TrlAdder", {}, tokenizer, observation_format="chat"
    )
    assert [tool.__name__ for tool in runner.tools] == ["add"]
    built = envs.TrlAdder.built
    rows = [{"prompt": "p", "answer": "5"}, {"prompt": "q", "answer": "6"}]
    gens = runner.run(engine, ["What is 2 + 3?", "What is 3 + 3?"], rows, SamplingParams(n=2))
    assert envs.TrlAdder.built - built == 4  # one instance per episode
    first_prompt = tokenizer.decode(engine.prompts[0][0])
    assert '"description": "Add two integers."' in first_prompt and '"last"' not in first_prompt
    for gen in gens[0] + gens[1]:
        assert gen.turns == 2 and "<tool_response>\n5\n</tool_response>" in tokenizer.decode(
            gen.token_ids
        )
    # The row's answer reached reset: only the first prompt's episodes summed to their target.
    assert [g.environment_reward for g in gens[0] + gens[1]] == [1.0, 1.0, 0.0, 0.0]


def test_a_trl_environment_in_a_training_config(tokenizer: Any, tmp_path: Path) -> None:
    """Named in `online.environment`, a TRL class shows its methods in every prompt and its
    get_reward is the `environment` reward of each rollout."""
    from types import SimpleNamespace

    from alignlib.algorithms import get as get_preset
    from alignlib.algorithms import router_for
    from alignlib.config import load_config
    from alignlib.trainer.online_collect import RolloutCollector

    data = tmp_path / "rows.jsonl"
    rows = [
        {"prompt": "What is 2 + 3?", "answer": "5"},
        {"prompt": "What is 1 + 1?", "answer": "2"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data), "shuffle": False},
        "rollout": {"n": 2, "max_new_tokens": 64},
        "online": {
            "prompts_per_step": 2,
            "rewards": [
                {"name": "environment"},
                {"name": "online_environments:sums_seen", "weight": 0.5},
            ],
            "environment": {"name": "online_environments:TrlAdder", "observation_format": "chat"},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    run = load_config(path)
    collector = RolloutCollector(run, tokenizer, router_for(get_preset("grpo"), run.online))
    engine = ReplayEngine(tokenizer, [CALL, "So \\boxed{5}."])
    rollouts, _, _ = collector.rollout_and_score(SimpleNamespace(engine=engine), 0, 0)  # type: ignore[arg-type]
    assert '"name": "add"' in tokenizer.decode(engine.prompts[0][0])
    # get_reward (1 where the sum hit the row's answer) + 0.5 · one call read from the instance
    assert rollouts.rewards.tolist() == [[1.5, 1.5], [0.5, 0.5]]
    config["online"].pop("environment")  # type: ignore[attr-defined]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(RewardError, match=r"rewards\[0\].name: environment is the episode"):
        RolloutCollector(load_config(path), tokenizer, router_for(get_preset("grpo"), run.online))
    config["online"]["rewards"] = config["online"]["rewards"][1:]  # type: ignore[index]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(RewardError, match="reads `environments`"):
        RolloutCollector(load_config(path), tokenizer, router_for(get_preset("grpo"), run.online))
