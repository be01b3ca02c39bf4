"""The `data:` section: the training rows, how they are read and tokenized, and the held-out
rows an offline run scores with its own loss and metrics (`data.heldout`, TRL's eval_dataset)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignlib.config.section import Section


class DataHeldoutConfig(Section):
    path: str | None = None
    """Held-out rows in the training format (a file, `builtin:NAME` or a hub data set); null:
    the last `size` rows of data.path, which then do not train."""
    split: str = "test"
    """Split to read from a hub data set given as `path`."""
    size: int | None = Field(64, gt=0)
    """Rows to score: the first `size` of `path`, or the last `size` of data.path; null: all of
    `path`."""
    every: int | None = Field(10, gt=0)
    """Score them every N steps (and before training and at the end); null: only before and
    after. Logged as `heldout/<metric>`: the loss and every metric the estimator reports
    (`heldout/dpo/accuracy`, `heldout/reward_model/margin`, ...), averaged over the held-out
    mini-batches of train.batch_size rows."""

    @model_validator(mode="after")
    def _some_rows(self) -> DataHeldoutConfig:
        if self.path is None and self.size is None:
            raise ValueError(
                "data.heldout: give size (the last rows of data.path are held out) or path"
            )
        return self


DataFormat = Literal["auto", "sft", "preference", "tpo", "bvpo", "kto", "prompts", "stepwise"]


class StepwiseConfig(Section):
    """How `stepwise` rows (TRL's stepwise supervision) train a process reward model in
    Math-Shepherd's layout: each step is followed by `step_tag`, and the model learns to
    predict `good_token` after the tag of a right step and `bad_token` after a wrong one."""

    step_tag: str = Field("ки", min_length=1)
    """The tag that closes each step (Math-Shepherd's and OpenRLHF's placeholder)."""
    good_token: str = Field("+", min_length=1)
    """The token predicted after a right step's tag (one token of the vocabulary)."""
    bad_token: str = Field("-", min_length=1)
    """The token predicted after a wrong step's tag (one token of the vocabulary)."""

    @property
    def tokens(self) -> tuple[str, str, str]:
        """(step tag, good token, bad token)."""
        return self.step_tag, self.good_token, self.bad_token


class DataConfig(Section):
    path: str = "builtin:gsm8k_pairs"
    """Training data: a .jsonl/.json/.parquet file (relative to the config file), `builtin:NAME`
    for a data set alignlib builds offline (`builtin:gsm8k_pairs`, `builtin:gsm8k_short_pairs`,
    `builtin:gsm8k_sft`, `builtin:gsm8k_tpo`, `builtin:gsm8k_bvpo`, `builtin:gsm8k_prompts`,
    `builtin:arithmetic_prompts`, `builtin:calculator_prompts`: products to solve with the
    calculator environment), or a hub data set name."""
    format: DataFormat = "auto"
    """Row format: sft {prompt, completion} or {messages}; preference {prompt, chosen, rejected}
    (optionally a numeric `margin`, the pair's target margin for reward_model, as in TRL);
    tpo {prompt, reference, chosen, rejected}; bvpo preference rows with a boolean `trace`;
    kto {prompt, completion, label} (label true: desirable, false: undesirable);
    prompts {prompt, answer} (online methods); stepwise {prompt, completions: [step, ...],
    labels: [bool, ...]} (TRL's stepwise supervision: `algorithm: sft` trains a process reward
    model on it, see `stepwise`). `auto` infers it from the first row's fields."""
    unpair: bool = False
    """Train KTO on preference rows: each {prompt, chosen, rejected} row becomes the kto rows
    {prompt, completion: chosen, label: true} and {prompt, completion: rejected, label: false}
    (TRL's `unpair_preference_dataset`)."""
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
    heldout: DataHeldoutConfig | None = None
    """Held-out rows scored by the run's loss and metrics, e.g. {size: 64, every: 10}; null:
    none (offline runs)."""
    stepwise: StepwiseConfig = StepwiseConfig()
    """The process reward model layout of `stepwise` rows."""
    prompt_field: str = "prompt"
    """Column holding the prompt of every row, offline and online, held-out rows included
    (GSM8K and many RL sets call it `question`, instruction sets `instruction`): read as
    `prompt` by the format, the rollouts and every reward; the column keeps its name. The
    other fields keep their format's names (`chosen`, `completion`, ...)."""
    answer_field: str = "answer"
    """Column holding the gold final answer of online rows and held-out rows (what the `math`
    reward grades against and rewards receive as `answer`). TRL data sets call it `solution`:
    set `answer_field: solution` there, and point `online.demonstration_field` at a column of
    worked solutions (or use a method without demonstrations)."""
