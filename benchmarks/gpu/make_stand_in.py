"""A random-init model of Qwen2.5-0.5B's shape, saved as a Hugging Face folder, for GPU runs on a
machine with no hub: hidden 896, 24 layers, 14 heads (2 KV heads), intermediate 4864, tied
embeddings, with the vocabulary of the tokenizer given (SmolLM2's 49,152 tokens: 0.36 B
parameters; Qwen's own 151,936-token vocabulary would make it 0.49 B).

    python benchmarks/gpu/make_stand_in.py --tokenizer .gpu_assets/tokenizer --out /tmp/qwen05b
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", required=True, help="folder with the tokenizer files")
    parser.add_argument("--out", required=True, help="folder to write the model into")
    parser.add_argument("--layers", type=int, default=24)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=args.layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    count = sum(p.numel() for p in model.parameters())
    print(f"stand-in model: {count / 1e9:.2f} B parameters in {args.out}")


if __name__ == "__main__":
    main()
