"""The `eval:` section: what to evaluate, how to sample, which metrics to report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from alignlib.config.environment import EnvironmentConfig, episode_sections
from alignlib.config.section import Section
from alignlib.eval.datasets import BENCHMARKS, benchmark_file
from alignlib.eval.metrics import doubling_ks

DEFAULT_PROMPT_TEMPLATE = (
    "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
)


class VerifierConfig(Section):
    """A learned verifier that picks one of the n samples (best@k)."""

    name: Literal["reward_model", "process_reward_model"]
    """`reward_model` (a sequence-classification model: one score per sample) or
    `process_reward_model` (a token-classification PRM in TRL's layout, its step scores made one
    by `params.reduce`: min, the default, last, mean or product)."""
    params: dict[str, Any] = {}
    """As for the online reward of the same name: {path, batch_size, ...}; loaded onto
    `eval.device` for each evaluation."""


class EvalConfig(Section):
    model: str | None = None
    """Model to evaluate: a Hugging Face folder, a training run folder (its `merged/` if present,
    else `final/`; a LoRA adapter is merged into its base model), `bundled:smollm2-135m-instruct`,
    or a hub name. null during training: the policy being trained."""
    benchmarks: list[str] = ["math500"]
    """Benchmarks: packaged names (`math500`, `gsm8k`, `aime24`, `aime25`, `amc23`,
    `minerva_math`, `olympiadbench`) or paths of .jsonl files."""
    n: int = Field(1, ge=1)
    """Sampled completions per problem (for avg@n, pass@k, maj@k). With n=1 and greedy_pass1 only
    the greedy completion is generated."""
    temperature: float = Field(0.6, gt=0)
    """Sampling temperature of the n samples (the greedy pass ignores it)."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling mass of the n samples."""
    top_k: int = Field(0, ge=0)
    """Sample the n completions from the k most likely tokens only (Qwen3's recommended 20);
    0 disables it (vLLM's -1)."""
    min_p: float = Field(0.0, ge=0, le=1)
    """Drop the tokens less likely than min_p × the most likely one's probability (before
    top-k / top-p, vLLM's order); 0 disables it."""
    max_new_tokens: int = Field(512, gt=0)
    """Completion length cap; a completion cut here usually has no boxed answer and counts as
    wrong."""
    limit: int | None = Field(None, gt=0)
    """Evaluate only the first N problems of each benchmark."""
    seed: int = 0
    """Sampling seed. A fixed seed, engine, batch_size and num_workers give identical samples."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """Generation engine: `transformers` (anywhere, CPU included) or `vllm` (needs vLLM)."""
    num_workers: int = Field(0, ge=0)
    """Ray rollout workers, each holding its own copy of the model; 0 generates in-process."""
    batch_size: int = Field(16, gt=0)
    """Sequences per generation batch (bounds memory; the samples depend on it)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Model dtype when eval loads the model itself: `auto` is bfloat16 on a GPU, float32 on a
    CPU."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """Where eval puts the model it loads itself: `auto` (CUDA when available), `cpu`, `cuda`,
    `cuda:N`. Ray workers resolve `auto` in their own process (their GPU, if Ray gave one)."""
    problem_field: str = "problem"
    """Question field of .jsonl benchmark files (packaged benchmarks always have `problem`)."""
    answer_field: str = "answer"
    """Reference-answer field of .jsonl benchmark files."""
    every: int | None = Field(None, gt=0)
    """During training: evaluate every N optimizer steps (null: no in-training evaluation)."""
    ks: list[int] | None = None
    """k values of pass@k and maj@k, each in [2, n]; null: 2, 4, 8, ... up to n, and n."""
    output_dir: str | None = None
    """Folder for results.json. null: `RUN/eval` for a run folder, else
    `runs/eval/<model name>`; during training, null writes nothing (set it to keep
    `DIR/step-N/results.json`)."""
    chat_template: bool = True
    """Wrap each prompt as a user turn in the tokenizer's chat template (when it has one)."""
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    """Prompt text; `{problem}` is replaced by the question (other braces are kept as they
    are)."""
    greedy_pass1: bool = True
    """Also decode greedily and report that as pass@1. false: pass@1 is the mean over the n
    samples (the unbiased estimate)."""
    environment: EnvironmentConfig | None = None
    """Answer each problem in multi-turn episodes with this environment (a tool-using model
    evaluated with its tool; the same section as online.environment, e.g. {name:
    calculator}); its tokens count toward max_new_tokens. Needs the tokenizer in this process
    (num_workers: 0, or evaluation during training). null: one turn."""
    environments: dict[str, EnvironmentConfig] = {}
    """Several environments, by a name of your choosing (as online.environments): each
    benchmark row names its own in the column `environment_field`, and only its tools are
    shown in its prompt. Instead of `environment`."""
    environment_field: str = "environment"
    """The benchmark column that names the row's environment (with `environments`)."""

    verifier: VerifierConfig | None = None
    """Score every sample with a learned verifier and report best@k: the accuracy of the sample
    it scores highest among the first k (Qwen2.5-Math's RM@k; a PRM: Math-Shepherd's
    verification). Needs n >= 2. null: none."""

    @model_validator(mode="after")
    def _one_kind_of_environment(self) -> EvalConfig:
        self.episode_sections()  # one line when both keys are set
        return self

    def episode_sections(self) -> dict[str, EnvironmentConfig]:
        """Every environment section by its config key; empty for one-turn answers."""
        return episode_sections("eval", self.environment, self.environments)

    @field_validator("verifier")
    @classmethod
    def _verifier_needs_samples(
        cls, value: VerifierConfig | None, info: ValidationInfo
    ) -> VerifierConfig | None:
        n = info.data.get("n")
        if value is not None and n is not None and n < 2:
            raise ValueError(f"a verifier picks among the n samples; set n >= 2 (got n={n})")
        if value is not None and value.params.get("reduce") == "steps":
            raise ValueError(
                "params.reduce: steps places step rewards for training; best@k needs one score "
                "per sample: min, last, mean or product"
            )
        return value

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"give at least one benchmark; valid names: {', '.join(BENCHMARKS)}")
        for name in value:
            # Paths are checked when loaded (they may be relative to a config file); a bare
            # word that is no packaged name is a typo, and benchmark_file says which names exist.
            if not _looks_like_path(name):
                benchmark_file(name)
        if len(set(value)) != len(value):
            raise ValueError(f"benchmarks are listed twice: {value}")
        return value

    @field_validator("prompt_template")
    @classmethod
    def _has_problem(cls, value: str) -> str:
        if "{problem}" not in value:
            raise ValueError("prompt_template must contain {problem}, where the question goes")
        return value

    @field_validator("ks")
    @classmethod
    def _ks_fit_n(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        # A field validator (n is declared first, so info.data has it when valid), so that an
        # error names eval.ks rather than the whole section.
        n = info.data.get("n")
        bad = [k for k in value or [] if n is not None and not 2 <= k <= n]
        if bad:
            raise ValueError(
                f"k={bad[0]} is not in [2, n={n}] (raise n to draw at least k samples; pass@1 "
                "is always reported)"
            )
        return value

    def resolved_ks(self) -> list[int]:
        """The k values actually reported (empty when n == 1)."""
        if self.ks is not None:
            return sorted(set(self.ks))
        return doubling_ks(self.n)

    @property
    def sampled(self) -> bool:
        """Whether a sampled pass (n completions at `temperature`) runs."""
        return self.n > 1 or not self.greedy_pass1

    def benchmark_label(self, name: str) -> str:
        """Short name used in tables and metric keys (file stem for .jsonl paths)."""
        return Path(name).stem if _looks_like_path(name) else name


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or Path(name).suffix != ""


def resolved_dtype(config: EvalConfig, device: torch.device) -> str:
    """`dtype: auto` made concrete for the device the model goes to."""
    if config.dtype != "auto":
        return config.dtype
    return "bfloat16" if device.type == "cuda" else "float32"
