"""The model card (README.md) of a run's final/ folder, and `alignlib push RUN REPO_ID`.

The card is what the Hub renders for the repository: YAML metadata (base model, library, tags)
the Hub indexes, then the method and its parameters, the data, the steps, the final metrics,
the alignlib version and the resolved config, so a pushed model says how it was made.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from alignlib.config.rewards import RewardSpec
from alignlib.config.schema import RunConfig
from alignlib.trainer.logs import METRICS_FILE, read_metrics
from alignlib.version import __version__

CARD = "README.md"
BUNDLED_HUB_NAMES = {"bundled:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Bundled models and the Hub repositories they come from (for `base_model`)."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", re.ASCII)
EXTRAS = ("training_curves.png", METRICS_FILE)
"""Run files pushed next to the model (the card links the plot)."""


def base_model(name: str) -> str | None:
    """The base model's Hub id, or None when it has none (a local folder, `tiny:`)."""
    name = BUNDLED_HUB_NAMES.get(name, name)
    return name if HUB_ID.match(name) and not Path(name).exists() else None


def method(config: RunConfig) -> str:
    """`dpo (beta=0.1)`, or the components of a composed estimator; then the options
    (`, LD-DPO α=0.5`, `, WPO weights`, `, high-entropy tokens {'ratio': 0.2}`, `, off-policy
    sequence mask {'delta': 0.5}`, `, reference synced every 512 steps (α=0.6)`) when set."""
    algo = config.algorithm
    options = (f", LD-DPO α={algo.ld_alpha}" if algo.ld_alpha is not None else "") + (
        ", WPO weights" if algo.wpo else ""
    )
    for label, params in (
        ("high-entropy tokens", algo.high_entropy),
        ("off-policy sequence mask", algo.off_policy_mask),
        ("second-moment mask (M2PO)", algo.second_moment_mask),
        ("adaptive entropy control", algo.adaptive_entropy),
    ):
        if params is not None:
            options += f", {label} {params}"
    sync = config.train.reference_sync
    if sync is not None:  # TR-DPO: the model trained against a moving reference
        options += f", reference synced every {sync.every} steps (α={sync.alpha})"
    if algo.name is not None:
        return _preset(algo.name, algo.params) + options
    if algo.mix is not None:
        parts = [f"{entry.weight:g}·{_preset(entry.name, entry.params)}" for entry in algo.mix]
        return "mix: " + " + ".join(parts) + options
    components = algo.model_dump(mode="json")["components"]
    text = yaml.safe_dump(components, default_flow_style=True, width=1000).strip()
    return f"composed estimator: {text}{options}"


def _preset(name: str, params: dict[str, Any]) -> str:
    """`dpo (beta=0.1)`: a preset with its overrides."""
    shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{name} ({shown})" if shown else name


def final_metrics(run_dir: Path) -> tuple[int, dict[str, float]]:
    """The last step and each metric's last logged value (timings left out)."""
    if not (run_dir / METRICS_FILE).is_file():
        return 0, {}
    records = read_metrics(run_dir)
    last: dict[str, float] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and not key.startswith("time/") and isinstance(value, (int, float)):
                last[key] = float(value)
    return (int(records[-1].get("step", 0)) if records else 0), last


def scores(config: RunConfig) -> bool:
    """Whether the run trains a reward model rather than a language model."""
    from alignlib.config.estimator import build_estimator

    return build_estimator(config.algorithm).scores_sequences()


def metadata(config: RunConfig) -> dict[str, Any]:
    """The Hub's YAML header (only keys the Hub understands)."""
    meta: dict[str, Any] = {
        "library_name": "peft" if config.lora.enabled else "transformers",
        # a reward model (a one-output score head) is a text classifier to the Hub
        "pipeline_tag": "text-classification" if scores(config) else "text-generation",
        "tags": ["alignlib", config.algorithm.name or "upge"],
    }
    base = base_model(config.model.name_or_path)
    if base:
        meta["base_model"] = base
    if HUB_ID.match(config.data.path) and not Path(config.data.path).exists():
        meta["datasets"] = [config.data.path]
    return meta


def _training_rows(config: RunConfig, steps: int) -> list[tuple[str, str]]:
    rows = [
        ("base model", config.model.name_or_path),
        ("method", method(config)),
        ("data", config.data.path + (f" (first {config.data.limit})" if config.data.limit else "")),
        ("steps", str(steps)),
        (
            "optimizer",
            f"AdamW, lr {config.optim.lr:g}, {config.optim.schedule} schedule, "
            f"warm-up {config.optim.warmup_ratio:g}",
        ),
        ("batch", f"{config.train.batch_size} (seed {config.train.seed})"),
    ]
    if config.model.reference_name_or_path is not None:  # a DPO reference, or OPD's teacher
        rows.append(("reference model", config.model.reference_name_or_path))
    if config.lora.enabled:
        rows.append(("LoRA", f"r {config.lora.r}, alpha {config.lora.alpha}"))
    if config.rollout is not None:
        rewards = ", ".join(f"{reward_label(r)}×{r.weight:g}" for r in config.online.rewards)
        rows.append(("online", f"{config.rollout.n} samples/prompt, rewards {rewards}"))
        for environment in config.online.episode_sections().values():
            rows.append(("environment", f"{environment.name}, up to {environment.max_turns} turns"))
    rows.append(("alignlib", __version__))
    return rows


def render(config: RunConfig, run_dir: Path) -> str:
    """The card's Markdown, YAML metadata first."""
    steps, metrics = final_metrics(run_dir)
    name = Path(config.output_dir).name
    base = base_model(config.model.name_or_path) or config.model.name_or_path
    lines = ["---", yaml.safe_dump(metadata(config), sort_keys=False).strip(), "---", ""]
    lines += [f"# {name}", ""]
    lines += [
        f"`{base}` post-trained with alignlib {__version__} using **{method(config)}** "
        f"for {steps} steps.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in _training_rows(config, steps)]
    if metrics:
        lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
    if (run_dir / "training_curves.png").is_file() or config.logging.plot:
        lines += ["", "![training curves](training_curves.png)"]
    lines += ["", "## Use", "", "```python", *_usage(config), "```"]
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    lines += ["", "## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def _usage(config: RunConfig) -> list[str]:
    if config.lora.enabled:
        return [
            "from peft import AutoPeftModelForCausalLM",
            'model = AutoPeftModelForCausalLM.from_pretrained("REPO_ID")',
        ]
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("REPO_ID")',
        'tokenizer = AutoTokenizer.from_pretrained("REPO_ID")',
    ]


def write_model_card(run_dir: Path, config: RunConfig) -> None:
    """RUN/final/README.md (and RUN/merged/README.md when merged weights were saved)."""
    text = render(config, Path(run_dir))
    for folder in ("final", "merged"):
        target = Path(run_dir) / folder
        if target.is_dir():
            (target / CARD).write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------- push
def push_plan(run_dir: Path, folder: str = "final") -> list[tuple[Path, str]]:
    """(local file, path in the repository): the model folder at the root, the plot and
    metrics.jsonl beside it."""
    source = Path(run_dir) / folder
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source} does not exist: push a finished run (its {folder}/ folder is written at "
            "the end of training)"
        )
    files = [(p, p.relative_to(source).as_posix()) for p in sorted(source.rglob("*"))]
    plan = [(p, name) for p, name in files if p.is_file()]
    plan += [(Path(run_dir) / e, e) for e in EXTRAS if (Path(run_dir) / e).is_file()]
    return plan


def _content(path: Path, name: str, repo_id: str) -> str | bytes:
    """The card's usage snippet names the repository it is pushed to."""
    if name != CARD:
        return str(path)
    return path.read_text(encoding="utf-8").replace('"REPO_ID"', f'"{repo_id}"').encode()


def check_repo_id(repo_id: str) -> None:
    """OWNER/NAME, by the Hub's rules (checked before a dry run too, which never asks the
    Hub)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        valid = bool(HUB_ID.match(repo_id)) and validate_repo_id(repo_id) is None
    except HFValidationError:
        valid = False
    if not valid:
        raise ValueError(
            f"repo_id {repo_id!r} is not a Hub repository id: expected OWNER/NAME (ASCII "
            "letters, digits, '-', '_', '.'; no spaces, no '--' or '..'), e.g. me/smollm2-dpo"
        )


def push(
    run_dir: Path, repo_id: str, *, folder: str = "final", private: bool = False, dry_run: bool
) -> list[str]:
    """Upload the run to the Hub as one commit (``dry_run``: only list it, no network).
    Returns the lines to print."""
    check_repo_id(repo_id)
    plan = push_plan(run_dir, folder)
    lines = [f"{name}  ({path.stat().st_size:,} bytes)" for path, name in plan]
    if not (Path(run_dir) / folder / CARD).is_file():
        lines.append(f"note: {folder}/ has no {CARD} model card (a run from an older alignlib)")
    if dry_run:
        return [f"would upload to https://huggingface.co/{repo_id}:", *lines]
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [CommitOperationAdd(name, _content(path, name, repo_id)) for path, name in plan]
    info = api.create_commit(
        repo_id, operations, commit_message=f"alignlib {__version__}: {Path(run_dir).name}"
    )
    return [*lines, f"pushed to {info.commit_url}"]


def reward_label(spec: RewardSpec) -> str:
    """A reward as the card names it: a learned one with its model's folder."""
    path = spec.params.get("path")
    return f"{spec.name}({path})" if isinstance(path, str) else spec.name
