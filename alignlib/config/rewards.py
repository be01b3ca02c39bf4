"""One entry of `online.rewards`: which reward, its weight, its parameters and how it is
called."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from alignlib.config.section import Section


class RewardSpec(Section):
    name: str
    """A registered reward (`math`, `format`, `length_penalty`), a learned model
    (`reward_model`, `process_reward_model`: see params) or `package.module:function`
    (a TRL reward function or a verl compute_score file work unchanged: see `form`; a module of
    your own must be importable, e.g. `PYTHONPATH=<its folder>`, even beside the config); an
    alignlib-form reward is called as fn(completion, **columns) with the row's columns it names
    (all of them when it takes **kwargs), plus num_tokens when it accepts it, and must return a
    finite number (None, NaN or an exception stops the run with one line naming the reward and
    the row)."""
    weight: float = Field(1.0, allow_inf_nan=False)
    """The row's reward is the weighted sum of all rewards."""
    params: dict[str, Any] = {}  # noqa: RUF012
    """Keyword arguments for the function (e.g. {target_length: 200}; `math` takes
    {timeout_s}); a name the function does not take is refused before the model loads.
    `reward_model` (a sequence-classification model): {path, batch_size, max_length, dtype};
    `process_reward_model`: {path, batch_size, step_separator ("\\n"), reduce (min | last |
    mean | product | steps: each step's score on its last token, for GAE and `grpo_process`),
    dtype, format (trl: a token-classification model in TRL's PRMTrainer layout;
    math_shepherd: a causal LM rating each step's `step_tag` "ки" by the logits of
    `good_token` "+" vs `bad_token` "-", as Math-Shepherd and OpenRLHF)}; dtype auto:
    bfloat16 on CUDA, float32 elsewhere."""
    form: Literal["auto", "alignlib", "trl", "verl"] = "auto"
    """How the function is called. `alignlib`: fn(completion, **columns) -> float, once per
    completion. `trl`: TRL's fn(completions, **columns) -> list[float | None], once per batch,
    columns as lists, completions as message lists when the prompts are; None is "no opinion"
    (left out of the weighted sum, as TRL's nansum). `verl`: compute_score(data_source,
    solution_str, ground_truth, extra_info) -> float | dict (its "score"), ground_truth from
    the row's reward_model.ground_truth, ground_truth or answer. `auto` reads the signature:
    first parameter `completions` → trl, `data_source` (or solution_str) → verl. An `async def`
    reward of any form has a batch's calls awaited concurrently."""
