"""Learned reward models in an online run: `{name: reward_model, params: {path: ...}}` (a
sequence-classification model: one score per completion, as TRL's GRPOTrainer takes a model
path among its reward_funcs, or verl's reward_model section) and `{name: process_reward_model,
params: {path: ...}}` (a token-classification PRM scoring each step, TRL's PRM layout).

Each is checked from its config.json and params when the run is built, before any weights load,
and loaded once, onto the run's device, when it first scores. Not imported by
``alignlib.rewards`` itself (it needs torch at import).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlib.rewards.calling import RewardError, check_params
from alignlib.rewards.process_reward import ProcessRewardScorer, Step, TaggedProcessRewardScorer
from alignlib.rewards.reward_model import RewardModelScorer

SEQUENCE_HEAD = "ForSequenceClassification"
TOKEN_HEAD = "ForTokenClassification"
REDUCTIONS = ("min", "last", "mean", "product", "steps")
"""How a PRM's step scores make a completion's reward: the `min` step (Math-Shepherd's and
Lightman et al.'s verification), the `last`, the `mean`, the `product` (the probability that
every step is right), or `steps`: each step's score is a reward on the step's last token
(process supervision; the completion's reward is their sum)."""
PARAMS = {
    "reward_model": ("path", "batch_size", "max_length", "dtype"),
    "process_reward_model": (
        *("path", "batch_size", "step_separator", "reduce", "dtype"),
        *("format", "step_tag", "good_token", "bad_token"),
    ),
}
FORMATS = {"trl": "ForTokenClassification", "math_shepherd": "ForCausalLM"}
"""A PRM's layout, and the architecture its folder must have: `trl` (a token-classification
model, TRL's PRMTrainer) or `math_shepherd` (a causal LM rating a step tag with a good and a
bad token: Math-Shepherd's PRMs, OpenRLHF's train_prm)."""
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _architectures(config_file: Path, where: str) -> list[str]:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: cannot read {config_file}: {exc}") from None
    names = config.get("architectures") if isinstance(config, dict) else None
    return [a for a in names or [] if isinstance(a, str)]


def check_model_folder(path: str, where: str, head: str = SEQUENCE_HEAD, prefix: str = "") -> str:
    """``path`` if it is a model folder (or Hub id) whose architecture ends in ``head``, read from
    its config.json before any weights load; otherwise one ValueError line naming ``where``
    (``prefix``: how the setting spells a path, e.g. ``reward_model:``)."""
    folder = Path(path).expanduser()
    kind = _kind(head)
    what = f"{kind} models (AutoModel{head})"
    if not path:
        raise ValueError(f"{where}: needs a model folder, e.g. {prefix}/path/rm")
    if not folder.exists():
        hub_id = not folder.is_absolute() and path.count("/") == 1 and path[0] not in ".~"
        if not hub_id:
            raise ValueError(f"{where}: {path} does not exist; give a reward model folder")
        names = _hub_architectures(path, where)
    else:
        names = _local_architectures(folder, path, where, head, prefix)
    if not any(name.endswith(head) for name in names):
        found = f"a {names[0]}" if names else "a model with no 'architectures' in its config.json"
        raise ValueError(
            f"{where}: {path} is {found}, not a {kind} reward model (its score head would be "
            f"random); reward models here are {what}"
        )
    return path if not folder.exists() else str(folder)


def _kind(head: str) -> str:
    kinds = {SEQUENCE_HEAD: "sequence-classification", TOKEN_HEAD: "token-classification"}
    return kinds.get(head, "causal-LM")


def _hub_architectures(model_id: str, where: str) -> list[str]:
    from transformers import AutoConfig

    try:
        return list(getattr(AutoConfig.from_pretrained(model_id), "architectures", None) or [])
    except Exception as exc:  # offline, unknown repo, gated: all mean "cannot use it"
        raise ValueError(
            f"{where}: {model_id} is not a local folder and its Hub config could not be read "
            f"({type(exc).__name__}); give a reward model folder"
        ) from None


def _local_architectures(folder: Path, path: str, where: str, head: str, prefix: str) -> list[str]:
    if not folder.is_dir():
        raise ValueError(f"{where}: {path} is a file; give a reward model folder")
    config_file = folder / "config.json"
    if config_file.is_file():
        return _architectures(config_file, where)
    final = folder / "final"
    if (final / "config.json").is_file():
        if any(n.endswith(head) for n in _architectures(final / "config.json", where)):
            raise ValueError(f"{where}: {path} is a run folder; give its model: {prefix}{final}")
        raise ValueError(
            f"{where}: {path} is a training run folder (its model, {final}, is not a "
            f"{_kind(head)} model); give a reward model folder"
        )
    raise ValueError(f"{where}: {path} has no config.json, so it is not a model folder")


@dataclass
class LearnedReward:
    """One configured reward model, checked now and loaded on first use."""

    name: str
    """`reward_model` or `process_reward_model`."""
    path: str
    settings: dict[str, Any]
    device: torch.device | None = None
    scorer: RewardModelScorer | ProcessRewardScorer | None = field(default=None, repr=False)

    @classmethod
    def checked(
        cls, name: str, params: Mapping[str, Any], key: str, device: torch.device | None = None
    ) -> LearnedReward:
        """The reward from its ``params`` (``key``: where they are configured); one line for an
        unknown, missing or wrong value."""
        check_params(name, None, params, key, PARAMS[name])
        if not isinstance(params.get("path"), str):
            raise RewardError(f"{key}.path: {name} needs the model's folder, e.g. path: ./rm")
        settings = {k: v for k, v in params.items() if k != "path"}
        _check_settings(settings, key)
        head = SEQUENCE_HEAD
        if name == "process_reward_model":
            head = FORMATS[settings.get("format", "trl")]
        try:
            path = check_model_folder(params["path"], f"{key}.path", head)
        except ValueError as exc:
            raise RewardError(str(exc)) from None
        if head == FORMATS["math_shepherd"]:
            _check_rating_tokens(path, settings, key)
        return cls(name, path, settings, device)

    @property
    def per_step(self) -> bool:
        """Its step scores are rewards on the steps' last tokens (`reduce: steps`)."""
        return self.settings.get("reduce") == "steps"

    def load(self) -> RewardModelScorer | ProcessRewardScorer:
        if self.scorer is not None:
            return self.scorer
        import transformers

        device = self.device or torch.device("cpu")
        dtype = DTYPES[self.settings.get("dtype", "auto")]
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        batch_size = int(self.settings.get("batch_size", 8))
        if self.name == "process_reward_model":
            self.scorer = self._process_scorer(tokenizer, dtype, device, batch_size)
        else:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                self.path, num_labels=1, dtype=dtype
            )
            max_length = self.settings.get("max_length")
            self.scorer = RewardModelScorer(model.to(device), tokenizer, batch_size, max_length)
        return self.scorer

    def _process_scorer(
        self, tokenizer: Any, dtype: torch.dtype, device: torch.device, batch_size: int
    ) -> ProcessRewardScorer:
        import transformers

        separator = self.settings.get("step_separator", "\n")
        if self.settings.get("format", "trl") == "trl":
            model = transformers.AutoModelForTokenClassification.from_pretrained(
                self.path, dtype=dtype
            )
            return ProcessRewardScorer(model.to(device), tokenizer, separator, batch_size)
        model = transformers.AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        tokens = {
            k: self.settings[k]
            for k in ("step_tag", "good_token", "bad_token")
            if k in self.settings
        }
        return TaggedProcessRewardScorer(
            model.to(device), tokenizer, separator, batch_size, **tokens
        )

    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], allow_nonfinite: bool = False
    ) -> tuple[list[float], list[list[tuple[int, float]]] | None]:
        """(one reward per completion, and with `reduce: steps` each completion's (character
        offset where a step ends, its score) pairs; else None). A NaN / inf score, of a
        completion or of any of its steps, is one RewardError unless ``allow_nonfinite``
        (`train.nonfinite: skip`, whose step guard then drops the step)."""
        scorer = self.load()
        if isinstance(scorer, RewardModelScorer):
            scores = [[value] for value in scorer(prompts, completions)]
        else:
            scores = scorer(prompts, completions)
        if not allow_nonfinite:
            self.check_finite(scores)
        if isinstance(scorer, RewardModelScorer):
            return [values[0] for values in scores], None
        reduce = self.settings.get("reduce", "min")
        rewards = [reduce_steps(s, reduce) for s in scores]
        if reduce != "steps":
            return rewards, None
        steps: list[list[Step]] = [scorer.steps(c) for c in completions]
        placed = [
            [(step.end, value) for step, value in zip(row, values, strict=True)]
            for row, values in zip(steps, scores, strict=True)
        ]
        return rewards, placed

    def check_finite(self, scores: Sequence[Sequence[float]]) -> None:
        """One line naming the first completion with a NaN / inf score (a NaN step would slip
        through `min`, which passes over NaN)."""
        for index, values in enumerate(scores):
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                raise RewardError(
                    f"reward {self.name!r}: completion {index} scored {bad[0]} (not finite); "
                    "check the model's dtype (params.dtype: float32) and its inputs"
                )


def reduce_steps(scores: Sequence[float], reduce: str) -> float:
    """One completion's reward from its step scores (`steps`: their sum)."""
    if reduce == "min":
        return min(scores)
    if reduce == "last":
        return scores[-1]
    if reduce == "mean":
        return sum(scores) / len(scores)
    if reduce == "product":
        return float(torch.tensor(scores, dtype=torch.float64).prod())
    return sum(scores)


def _check_settings(settings: Mapping[str, Any], key: str) -> None:
    batch_size = settings.get("batch_size", 8)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise RewardError(f"{key}.batch_size: expected a whole number >= 1, got {batch_size!r}")
    max_length = settings.get("max_length")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise RewardError(f"{key}.max_length: expected a whole number >= 1, got {max_length!r}")
    if settings.get("dtype", "auto") not in DTYPES:
        raise RewardError(
            f"{key}.dtype: expected one of {', '.join(DTYPES)}, got {settings['dtype']!r}"
        )
    if settings.get("reduce", "min") not in REDUCTIONS:
        raise RewardError(
            f"{key}.reduce: expected one of {', '.join(REDUCTIONS)}, got {settings['reduce']!r}"
        )
    if settings.get("format", "trl") not in FORMATS:
        raise RewardError(
            f"{key}.format: expected one of {', '.join(FORMATS)}, got {settings['format']!r}"
        )
    strings = {"step_separator": "\n", "step_tag": "ки", "good_token": "+", "bad_token": "-"}
    for name, default in strings.items():
        value = settings.get(name, default)
        if not isinstance(value, str) or not value:
            raise RewardError(f"{key}.{name}: expected a non-empty string, got {value!r}")


def _check_rating_tokens(path: str, settings: Mapping[str, Any], key: str) -> None:
    """A tagged PRM's good and bad tokens must each be one token of its vocabulary (read from
    its tokenizer, before any weights load)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):  # steps are found by character offsets
        raise RewardError(
            f"{key}.path: {path}'s tokenizer is a slow (Python) one; the math_shepherd format "
            "finds each step's tag by character offsets, which needs a fast tokenizer "
            "(tokenizer.json)"
        )
    for name, default in (("good_token", "+"), ("bad_token", "-")):
        try:
            TaggedProcessRewardScorer.token_id(tokenizer, settings.get(name, default))
        except ValueError as exc:
            raise RewardError(f"{key}.{name}: {str(exc).split(': ', 1)[1]}") from None
