"""A named reference model end to end on tiny models: on-policy distillation brings the student
towards its teacher, DPO reads the named reference instead of the initial policy, and every
misuse (no teacher, a teacher with another tokenizer, a reference nothing reads) is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_online import PROMPTS, make_config
from test_trainer import config_file, datasets
from transformers import AutoModelForCausalLM

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def save_model(folder: Path, vocab_size: int = 512, sharpen: float = 4.0) -> Path:
    """tiny:llama with its LM head scaled by ``sharpen``: a teacher that peaks where the
    student leans (so the student's samples carry signal)."""
    tokenizer = build_tokenizer(vocab_size)
    model = build_tiny_model(tokenizer, hidden=64, layers=2)
    model.lm_head.weight.data *= sharpen
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def first_token_reverse_kl(student: torch.nn.Module, teacher: torch.nn.Module) -> float:
    """KL(π ‖ π_T) of the first completion token, over the full vocabulary, averaged over the
    training prompts as the engine formats them (the chat template's generation prompt)."""
    tokenizer, values = build_tokenizer(), []
    for row in PROMPTS[:4]:
        chat = [{"role": "user", "content": row["prompt"]}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        with torch.no_grad():
            p = student(ids).logits[0, -1].log_softmax(-1)
            q = teacher(ids).logits[0, -1].log_softmax(-1)
        values.append(float((p.exp() * (p - q)).sum()))
    return sum(values) / len(values)


def test_distillation_brings_the_student_to_its_teacher(tmp_path: Path) -> None:
    teacher_dir = save_model(tmp_path / "teacher")
    config = make_config(
        tmp_path,
        algorithm={"name": "opd"},
        model={"name_or_path": "tiny:llama", "reference_name_or_path": str(teacher_dir)},
        train={"max_steps": 10, "seed": 0},
        optim={"lr": 1e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        rollout={"n": 32, "max_new_tokens": 6},
        online={"micro_batch_size": 32},
    )
    result = Trainer(load_config(config)).train()
    load = AutoModelForCausalLM.from_pretrained
    teacher, trained = load(teacher_dir), load(result.output_dir / "final")
    untrained = build_tiny_model(build_tokenizer(), hidden=64, layers=2)  # tiny:llama
    before = first_token_reverse_kl(untrained, teacher)
    after = first_token_reverse_kl(trained, teacher)
    assert after < 0.8 * before, (before, after)  # measured: 0.116 -> 0.072
    assert result.history[-1]["opd/reverse_kl"] > 0  # the sampled estimate is logged
    card = (result.output_dir / "final" / "README.md").read_text()
    assert f"| reference model | {teacher_dir} |" in card


def test_dpo_reads_the_named_reference_not_the_initial_policy(tmp_path: Path) -> None:
    data = datasets(tmp_path)["preference"]
    first = {}
    for name, model in {
        "initial": {"name_or_path": "tiny:llama"},
        "named": {
            "name_or_path": "tiny:llama",
            "reference_name_or_path": str(save_model(tmp_path / "ref")),
        },
    }.items():
        (tmp_path / name).mkdir()
        path = config_file(tmp_path / name, data, "dpo", model=model, train={"max_steps": 1})
        first[name] = Trainer(load_config(path)).train().history[0]
    # before any update π = π_0: every implicit reward against π_0 is 0, against another model not
    assert abs(first["initial"]["dpo/margin"]) < 1e-6
    assert abs(first["named"]["dpo/chosen_reward"]) > 1e-2


def one_line_error(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()  # transformers' loading bars may come first
    errors = [line for line in err.splitlines() if line.startswith("alignlib: error:")]
    assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def test_distillation_without_a_teacher_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(tmp_path, algorithm={"name": "opd"})
    assert "set model.reference_name_or_path to the teacher" in one_line_error(config, capsys)


def test_a_teacher_with_another_tokenizer_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = save_model(tmp_path / "teacher", vocab_size=600)
    config = make_config(
        tmp_path,
        algorithm={"name": "opd"},
        model={"name_or_path": "tiny:llama", "reference_name_or_path": str(teacher)},
    )
    err = one_line_error(config, capsys)
    assert "model.reference_name_or_path" in err and "tokenizer differs" in err


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [("sft", "reads no reference log-probs"), ("opd", "is an online RL method")],
)
def test_a_reference_nothing_reads_and_offline_distillation_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str, expected: str
) -> None:
    data = datasets(tmp_path)["sft"]
    model = {"name_or_path": "tiny:llama", "reference_name_or_path": "tiny:llama"}
    config = config_file(tmp_path, data, algorithm, model=model)
    assert expected in one_line_error(config, capsys)
