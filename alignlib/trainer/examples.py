"""The offline rows of a run: read, validated and tokenized once (every format, a process reward
model's stepwise rows included), with one warning when limits cut them."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from alignlib.config.schema import DataConfig
from alignlib.console import warn
from alignlib.data import Example, encode_example, infer_format, load_rows
from alignlib.data.formats import check_rows, unpaired, with_derived_fields
from alignlib.data.stepwise import stepwise_examples


def load_examples(
    config: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    chat: bool,
    whole_turns: bool = False,
    kl_rows: bool = True,
) -> tuple[list[Example], str]:
    """Read, validate and tokenize the training rows; returns the examples and the format.
    ``whole_turns``: completions as the chat template writes them (a reward model's rows);
    ``kl_rows``: kto rows get their KL row (another row's completion; KTO's z₀ reads them)."""
    rows = load_rows(config.path, config.split, config.limit, config.prompt_field)
    if not rows:
        raise ValueError(f"data.path {config.path} has no rows")
    fmt = infer_format(rows[0], config.path) if config.format == "auto" else config.format
    check_rows(rows, fmt, config.path)
    if config.unpair:
        rows, fmt = unpaired(rows, fmt, config.path)
    rows = with_derived_fields(rows, fmt, kl_rows)
    if fmt == "stepwise":  # a process reward model's rows: one sequence, labels as targets
        limit = config.max_prompt_length + config.max_completion_length
        examples = stepwise_examples(tokenizer, rows, config.stepwise.tokens, limit)
    else:
        examples = [
            encode_example(
                tokenizer,
                row,
                fmt,
                index=i,
                chat=chat,
                max_prompt_length=config.max_prompt_length,
                max_completion_length=config.max_completion_length,
                whole_turns=whole_turns,
            )
            for i, row in enumerate(rows)
        ]
    warn_cut(examples, config)
    return examples, fmt


def warn_cut(examples: list[Example], config: DataConfig) -> None:
    """One line when rows were longer than the limits: a cut silently changes what trains."""
    prompts = sum(e.cut_prompt for e in examples)
    completions = sum(e.cut_completions for e in examples)
    total = sum(len(e.sequences) for e in examples)
    cuts = []
    if prompts:
        cuts.append(
            f"{prompts} of {len(examples)} prompts to their last {config.max_prompt_length} "
            "tokens (data.max_prompt_length)"
        )
    if completions:
        cuts.append(
            f"{completions} of {total} completions to {config.max_completion_length} tokens "
            "(data.max_completion_length)"
        )
    if cuts:
        warn(f"{config.path}: cut {' and '.join(cuts)}; raise the limits to train them whole")
