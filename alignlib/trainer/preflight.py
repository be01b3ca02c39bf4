"""Everything a run can be refused for before the model loads, in one place.

``check_run(config, estimator)`` runs in ``Trainer.__init__`` between building the estimator and
loading the policy. It catches the runs that would otherwise exit 0 having trained the wrong
objective (DPO against all-zero reference log-probs, identical pairs, a string `trace`, an
answer graded against "None") or fail only after minutes of loading (a typo in a reward
parameter, a Ray address nothing listens on). Each refusal is one line naming the key, file or
row and the fix; legitimate but suspicious data (a few identical pairs) is a warning line and a
metric the loop logs. The online checks are in preflight_online.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alignlib.config.distributed import DistributedConfig
from alignlib.config.loader import ConfigError, check_output_dir
from alignlib.config.schema import CriticConfig, RunConfig
from alignlib.console import warn
from alignlib.data import DataError, infer_format, load_rows
from alignlib.data.collate import SEQUENCE_FIELDS
from alignlib.data.fit import check_fit, label_balance
from alignlib.data.formats import FORMAT_FIELDS, check_rows, identical_pairs, unpaired
from alignlib.estimator import PairwiseAdvantage, PolicyGradientTerm, UnifiedEstimator
from alignlib.trainer.preflight_online import check_online, check_prompts
from alignlib.trainer.reference_sync import check_reference_sync

OFFLINE_FIELDS = {
    "logprobs",
    "mask",
    "prompt_mask",
    "ref_logprobs",
    "entropy",
    "roles",
    "pair_ids",
    "trace",
    "log_sum_sq_probs",  # WPO's, from a no-grad pass (trainer.head_hooks)
}
"""Batch fields an offline step fills (prev_logprobs only inside the preference iterations)."""


def check_run(config: RunConfig, estimator: UnifiedEstimator) -> dict[str, float]:
    """Refuse what would train the wrong objective, hang, or fail after the model loads.

    Returns metrics about the data for the loop to log (``data/identical_pairs``)."""
    check_output_dir(Path(config.output_dir))
    if config.rollout is None and config.online.rollout_correction is not None:
        raise ConfigError(
            "online.rollout_correction corrects rollouts by the engine's log-probs, and this run "
            "samples none (no rollout: section); remove the key, or add rollout: to train online"
        )
    if config.rollout is None and config.online.episode_sections():
        raise ConfigError(
            "online.environment plays episodes with rollouts, and this run samples none (no "
            "rollout: section); add rollout: to train online, or remove the key"
        )
    if config.rollout is None and config.logging.completions:
        raise ConfigError(
            "logging.completions writes the completions an online run samples, and this run "
            "has no rollout: section; remove the key, or add rollout: to train online"
        )
    if config.data.heldout is not None and (config.rollout or config.iterative):
        raise ConfigError(
            "data.heldout scores held-out rows of an offline run; online runs and preference "
            "iterations track held-out accuracy with online.heldout: move it there"
        )
    note_ignored_distributed(config)
    check_critic(config, estimator)
    check_machine(config)
    check_reference_model(config, estimator)
    check_reference_sync(config, estimator)
    if estimator.scores_sequences():
        check_reward_model(config, estimator)
    if config.rollout is not None:
        check_online(config, estimator)
        return {}
    if config.iterative is not None:
        check_iterative(config, estimator)
        return {}
    check_offline_estimator(config, estimator)
    return check_offline_data(config, estimator)


def check_critic(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """A `critic:` section without a method that trains one changes nothing: one warning."""
    if estimator.critic_loss() is None and config.critic != CriticConfig():
        warn(
            f"critic: has no effect: algorithm {config.algorithm.name or '(components)'} trains "
            "no critic (an advantage that reads a value model's values does, e.g. ppo_gae's "
            "gae); remove the section"
        )


def check_machine(config: RunConfig) -> None:
    """A GPU asked of Ray with no CUDA device here and no cluster waits out the timeout; flash
    attention without its package fails with a traceback after the model loads."""
    flash = config.model.attn_implementation == "flash_attention_2"
    if flash and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "model.attn_implementation: flash_attention_2 needs the flash-attn package (and a "
            "CUDA GPU); use sdpa"
        )
    import torch

    if torch.cuda.is_available():
        return
    dist, rollout = config.distributed, config.rollout
    if dist.num_workers > 0 and dist.use_gpu and dist.ray_address is None:
        raise ConfigError(
            "distributed.use_gpu: true but torch sees no CUDA device here; set it to false (or "
            "give distributed.ray_address of a cluster with GPUs)"
        )
    if rollout is None or rollout.num_workers == 0 or rollout.worker_num_gpus == 0:
        return
    # distributed.ray_address is the rollout workers' cluster only when training runs on Ray.
    if rollout.ray_address is None and (dist.ray_address is None or dist.num_workers == 0):
        raise ConfigError(
            f"rollout.worker_num_gpus: {rollout.worker_num_gpus:g} but torch sees no CUDA device "
            "here; set it to 0 (or give rollout.ray_address of a cluster with GPUs)"
        )


def check_reference_model(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """A distillation run names its teacher; a named reference model is one the run reads."""
    name = config.algorithm.name or "(components)"
    given = config.model.reference_name_or_path
    if given is None:
        if estimator.distills():
            raise ConfigError(
                f"algorithm {name} distils a teacher's log-probs into the policy: set "
                "model.reference_name_or_path to the teacher (a model with the policy's "
                "tokenizer); the initial policy as its own teacher would train nothing"
            )
        return
    if "ref_logprobs" not in estimator.requirements():
        raise ConfigError(
            f"model.reference_name_or_path is set, but algorithm {name} reads no reference "
            "log-probs, so it would be loaded for nothing; remove it, or pick a method with a "
            "reference (dpo and its family, opd, kto, grpo with kl_coef, ...)"
        )
    if config.iterative is not None and config.iterative.reference == "previous":
        raise ConfigError(
            "iterative.reference: previous makes π_ref the previous iterate, not "
            "model.reference_name_or_path; remove one of them"
        )
    if config.rollout is None and config.train.reference == "adapter":
        raise ConfigError(
            "train.reference: adapter computes π_ref as the policy with its LoRA adapter off, "
            "not model.reference_name_or_path; set train.reference: precompute, or remove "
            "model.reference_name_or_path"
        )


def check_reward_model(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """A reward model is trained offline on preference pairs (in one process or on Ray workers,
    packed or padded): the model has a score head and no LM head, so nothing may generate with
    it or read its log-probs."""
    name = config.algorithm.name or "(components)"
    terms = [t for t in estimator.terms if isinstance(t, PolicyGradientTerm)]
    if not all(t.likelihood.scalar_head for t in terms):
        raise ConfigError(
            f"algorithm {name} mixes a reward model's score with log-likelihood terms; a reward "
            "model has a score head and no language-model head: use the score likelihood alone"
        )
    refused = [
        (config.rollout is not None, "rollout", "remove the rollout: section"),
        (config.iterative is not None, "iterative", "remove the iterative: section"),
        (config.eval is not None, "eval", "remove the eval: section"),
    ]
    for present, key, fix in refused:
        if present:
            raise ConfigError(
                f"{key}: algorithm {name} trains a reward model (a score head, no text "
                f"generation) offline on preference pairs; {fix}"
            )


def note_ignored_distributed(config: RunConfig) -> None:
    """`distributed` keys that change nothing in this run, named in one warning line: all but
    num_workers when it is 0, `placement` when there are no Ray rollout workers to place."""
    dist, default = config.distributed, DistributedConfig()
    changed = [k for k in type(dist).model_fields if getattr(dist, k) != getattr(default, k)]
    if dist.num_workers == 0:
        keys = [f"distributed.{k}" for k in changed]
        why = "distributed.num_workers is 0, so training runs in this process"
        fix = "set distributed.num_workers to train on Ray workers"
    elif "placement" in changed and (config.rollout is None or config.rollout.num_workers == 0):
        keys = ["distributed.placement"]
        why = "it places Ray rollout workers, and this run has none (rollout.num_workers is 0)"
        fix = "set rollout.num_workers"
    else:
        return
    if keys:
        one = len(keys) == 1
        warn(
            f"{', '.join(keys)} {'has' if one else 'have'} no effect: {why}; {fix}, or remove "
            f"{'it' if one else 'them'}"
        )


# --------------------------------------------------------------------------------- offline
def check_offline_estimator(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """The estimator's batch fields must be ones an offline step computes for real: a missing
    reference is filled with zeros downstream, which trains a different loss without a word."""
    name = config.algorithm.name or "(components)"
    needs = estimator.requirements()
    online = sorted(k for k in needs if k not in OFFLINE_FIELDS | {"prev_logprobs"})
    if online:
        raise ConfigError(
            f"algorithm {name} is an online RL method (it needs batch.{online[0]}: "
            f"{needs[online[0]]}); add a rollout: section, or pick an offline method (sft, dpo, "
            "ipo, rpo, tpo, bvpo, ...)"
        )
    if "prev_logprobs" in needs:
        raise ConfigError(
            f"algorithm {name} needs the previous iterate's log-probs, which only the preference "
            "iterations compute: add an iterative: section"
        )
    if "log_sum_sq_probs" in needs and config.train.packing:
        warn(
            "train.packing: WPO reads log Σπ² off the LM head in the training forward, which "
            "runs padded rows; this run trains padded"
        )
    if "ref_logprobs" not in needs:
        return
    reference = config.train.reference
    if reference == "none":
        raise ConfigError(
            f"train.reference: none leaves algorithm {name} without reference log-probs "
            f"({needs['ref_logprobs']}); set train.reference: precompute (or adapter with "
            "lora.enabled: true), or use a reference-free method (simpo, orpo, cpo, tpo, tpo_l)"
        )
    if reference == "adapter" and not config.lora.enabled:
        raise ConfigError(
            "train.reference: adapter needs lora.enabled: true (the reference is the model with "
            "its LoRA adapter off); set lora.enabled: true or train.reference: precompute"
        )


def check_offline_data(config: RunConfig, estimator: UnifiedEstimator) -> dict[str, float]:
    """Rows of the right format and types; identical pairs refused (all) or counted (some)."""
    data = config.data
    rows = load_rows(data.path, data.split, data.limit, data.prompt_field)
    fmt = infer_format(rows[0], data.path) if data.format == "auto" else data.format
    if fmt not in SEQUENCE_FIELDS and fmt != "stepwise":  # stepwise: a PRM's labelled steps
        raise DataError(
            f"{data.path}: format '{fmt}' has prompts but no completions to train on offline; "
            "add a rollout: section for online RL, or give {prompt, completion} rows"
        )
    check_rows(rows, fmt, data.path)
    if data.unpair:
        rows, fmt = unpaired(rows, fmt, data.path)
    check_fit(estimator.terms, fmt, rows[0], data.path, config.algorithm.name or "(components)")
    balance = label_balance(estimator.terms, rows, data.path)
    if balance is not None:
        warn(balance)
    if selects_by_trace(estimator) and "trace" not in FORMAT_FIELDS.get(fmt, ()):
        raise DataError(
            f"{data.path}: algorithm {config.algorithm.name or '(components)'} splits pairs by "
            f"their boolean 'trace' field, but the rows are format '{fmt}'; add trace to every row"
        )
    same = identical_pairs(rows, fmt)
    if not same:
        return {}
    shown = ", ".join(str(i) for i in same[:5]) + (", ..." if len(same) > 5 else "")
    if len(same) == len(rows):
        raise DataError(
            f"{data.path}: every pair has chosen == rejected (all {len(rows)} rows); there is "
            "nothing to prefer: check that chosen and rejected come from different columns"
        )
    warn(
        f"{data.path}: {len(same)} of {len(rows)} pairs have chosen == rejected (rows {shown}); "
        "they carry no preference signal (logged as data/identical_pairs)"
    )
    return {"data/identical_pairs": float(len(same))}


def check_iterative(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """The iterations' method, prompts and oracle: a pairwise preference method, a known
    reward whose columns every row holds."""
    from alignlib.rewards import missing_columns, resolve_reward

    assert config.iterative is not None
    check_iterative_estimator(config, estimator)
    source = config.data.path
    rows = load_rows(source, config.data.split, config.data.limit, config.data.prompt_field)
    check_prompts(rows, source)
    oracle = config.iterative.oracle
    if oracle.startswith("reward_model:"):  # read its config.json before the policy loads
        from alignlib.trainer.sample_rank import check_reward_model_folder

        check_reward_model_folder(oracle.removeprefix("reward_model:"))
        return
    try:
        fn = resolve_reward(oracle)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"iterative.oracle: {exc}") from None
    for index, row in enumerate(rows, start=1):
        missing = missing_columns(fn, {}, row)
        if missing:
            raise DataError(
                f"{source} row {index}: iterative.oracle {oracle!r} needs field "
                f"{missing[0]!r}, which this row lacks or leaves null"
            )


def selects_by_trace(estimator: UnifiedEstimator) -> bool:
    """A term picks its rows by the pairs' `trace` flag (BVPO)."""
    return any(
        getattr(getattr(t, "rows", None), "trace", None) is not None for t in estimator.terms
    )


def trains_on_pairs(estimator: UnifiedEstimator) -> bool:
    """A pairwise preference method whose every term can train on bare (chosen, rejected)
    rows: no demonstrations, labels or trace flags, no SFT term imitating the rejected rows."""
    terms = estimator.terms
    pairwise = any(isinstance(getattr(t, "advantage", None), PairwiseAdvantage) for t in terms)
    if not pairwise or selects_by_trace(estimator):
        return False
    try:
        check_fit(terms, "preference", {}, "pairs", "")
    except DataError:
        return False
    return True


def check_iterative_estimator(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """Each iteration trains on (best, worst) pairs of sampled responses; INPO reads π_t next
    to π_ref, so its reference must stay the initial policy."""
    import alignlib.algorithms as algorithms

    name = config.algorithm.name or "(components)"
    if not trains_on_pairs(estimator):
        fits = [n for n in algorithms.available() if trains_on_pairs(algorithms.get(n))]
        raise ConfigError(
            f"iterative: trains on (best, worst) pairs of sampled responses, and algorithm "
            f"{name} is not a pairwise preference method that trains on them alone; use one "
            f"of: {', '.join(fits)}"
        )
    assert config.iterative is not None
    if config.iterative.reference == "previous" and "prev_logprobs" in estimator.requirements():
        raise ConfigError(
            f"iterative.reference: previous makes π_ref the previous iterate π_t, which algorithm "
            f"{name} already reads beside π_ref as its own input; set iterative.reference: initial"
        )
