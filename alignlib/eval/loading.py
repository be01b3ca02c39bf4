"""Find and load the model to evaluate: HF folders, training run folders, adapters, bundled."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignlib.models import (
    ADAPTER_CONFIG,
    BUNDLED_PREFIX,
    SMOLLM2_NAME,
    bundled_smollm2_folder,
    load_model_and_tokenizer,
    model_folder,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_model_dir(spec: str, key: str = "eval.model") -> str:
    """The folder (or bundled / hub name) that actually holds the weights of `spec`.

    A training run folder resolves to `RUN/merged` when present (the adapter already merged),
    else `RUN/final`. Anything that looks like a path but does not exist is an error here, so a
    typo never falls through to a hub download attempt.
    """
    if spec.startswith(BUNDLED_PREFIX):
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(model_folder(path, key, adapters=True))
    if path.exists():
        raise ValueError(f"{key}: {spec!r} is a file; pass the model's folder")
    if spec.startswith((".", "~", "/")) or spec.count("/") > 1 or "\\" in spec:
        raise FileNotFoundError(f"{key}: model path {spec!r} does not exist")
    # "org/name" or "name": a hub model (needs network; load_model_and_tokenizer says so).
    return spec


def load_eval_model(
    spec: str,
    dtype: str | torch.dtype = "float32",
    device: torch.device | None = None,
    key: str = "eval.model",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model named by `spec` (see `resolve_model_dir`), in eval mode; ``key`` is the
    setting that named it, first word of every error.

    A LoRA adapter folder is loaded onto its base model (`base_model_name_or_path` in
    adapter_config.json) and merged, so generation runs at full speed without peft hooks.
    """
    source = resolve_model_dir(spec, key)
    adapter = Path(source) / ADAPTER_CONFIG
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if not adapter.is_file():
        return load_model_and_tokenizer(
            source, dtype=dtype, device=device, attn_implementation=attn_implementation, key=key
        )
    from peft import PeftModel

    base_name = json.loads(adapter.read_text()).get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{adapter}: no base_model_name_or_path; cannot find the base model")
    base, tokenizer = load_model_and_tokenizer(
        _base_source(base_name),
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        key=f"{key}: {adapter}: base_model_name_or_path",
    )
    if (Path(source) / "tokenizer_config.json").is_file():
        # The run saved its tokenizer next to the adapter: that is the one it trained with.
        tokenizer = AutoTokenizer.from_pretrained(source)
    merged = PeftModel.from_pretrained(base, source).merge_and_unload()
    return merged.eval(), tokenizer


def _base_source(base_name: str) -> str:
    # The bundled model is loaded from its converted cache folder, which is what peft records;
    # map it back so a run trained on another machine (other cache path) still finds its base.
    if Path(base_name).name == SMOLLM2_NAME and not Path(base_name).is_dir():
        return BUNDLED_PREFIX + SMOLLM2_NAME
    return base_name


def hf_folder_for(
    spec: str, dtype: str = "float32", key: str = "eval.model"
) -> tuple[str, tempfile.TemporaryDirectory[str] | None]:
    """A plain HF folder for engines that load from disk (vLLM): adapters are merged into a temp
    folder (returned so the caller can clean it up), bundled models use their converted cache.
    ``key`` names the setting in errors."""
    source = resolve_model_dir(spec, key)
    if source == BUNDLED_PREFIX + SMOLLM2_NAME:
        return str(bundled_smollm2_folder()), None  # converted from the GGUF on first use
    if not (Path(source) / ADAPTER_CONFIG).is_file():
        return source, None
    model, tokenizer = load_eval_model(spec, dtype, key=key)
    tmp = tempfile.TemporaryDirectory(prefix="alignlib-eval-merged-")
    model.save_pretrained(tmp.name)
    tokenizer.save_pretrained(tmp.name)
    return tmp.name, tmp


def model_label(spec: str) -> str:
    """A short, file-name-safe name for a model spec (default output folder, chart labels)."""
    path = Path(spec.removeprefix(BUNDLED_PREFIX).rstrip("/"))
    name = path.name
    if name in ("final", "merged") and path.parent.name:
        name = path.parent.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "model"
