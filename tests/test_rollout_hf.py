"""Transformers rollout engine on a tiny random Llama: correctness of tokens, logprobs, stopping."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from alignlib.rollout.base import SamplingParams, create_engine
from alignlib.rollout.hf_engine import HFEngine
from alignlib.testing import build_tiny_model, build_tokenizer

PROMPTS = [
    "What is 2 + 3?",
    "Solve for x: 3x + 5 = 20, and explain every step of the computation carefully.",
    "Hello!",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    # init_std 0.2: peaky next-token distributions, so seeds and weights visibly change outputs.
    return build_tiny_model(tokenizer, init_std=0.2, seed=0)


@pytest.fixture()
def engine(model, tokenizer) -> HFEngine:
    return HFEngine(model, tokenizer, max_batch_size=4)


def teacher_forced_logits(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Logits that predicted each completion token, from one full forward pass (no KV cache)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)].float()


def gathered(logprobs: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    return logprobs.gather(1, torch.tensor(tokens)[:, None])[:, 0]


def test_shapes_indices_and_prompt_ids(engine):
    out = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=7, seed=0))
    encoded = engine.encode_prompts(PROMPTS)
    assert [len(gens) for gens in out] == [3, 3, 3]
    for i, gens in enumerate(out):
        assert [g.sample_index for g in gens] == [0, 1, 2]
        for g in gens:
            assert g.prompt_index == i
            assert g.prompt_ids == encoded[i]
            assert 1 <= len(g.token_ids) <= 7
            assert len(g.logprobs) == len(g.token_ids)
            assert all(lp <= 0 for lp in g.logprobs)
            assert g.text == engine.tokenizer.decode(g.token_ids, skip_special_tokens=True)
            if g.finish_reason == "length":
                assert len(g.token_ids) == 7
    # The chat template was applied to string prompts.
    assert encoded[0][0] == engine.tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_token_id_prompts_equal_string_prompts(engine):
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    by_text = engine.generate(PROMPTS, greedy)
    by_ids = engine.generate(engine.encode_prompts(PROMPTS), greedy)
    assert [g[0].token_ids for g in by_text] == [g[0].token_ids for g in by_ids]


def test_eos_stripping_and_finish_reasons(tokenizer):
    model = build_tiny_model(tokenizer, init_std=0.2, seed=3)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        # Make EOS likely at some positions only: its logit follows one hidden coordinate.
        model.lm_head.weight[eos].zero_()
        model.lm_head.weight[eos, 0] = 4.0
    engine = HFEngine(model, tokenizer, max_batch_size=16)
    out = engine.generate(PROMPTS, SamplingParams(n=8, max_new_tokens=10, seed=0))
    reasons = {g.finish_reason for gens in out for g in gens}
    assert reasons == {"stop", "length"}, "fixture should produce both kinds of endings"
    for g in (g for gens in out for g in gens):
        assert eos not in g.token_ids[:-1], "nothing may follow the EOS token"
        assert tokenizer.eos_token not in g.text
        assert len(g.logprobs) == len(g.token_ids)
        if g.finish_reason == "stop":
            assert g.token_ids[-1] == eos
            assert len(g.token_ids) <= 10
        else:
            assert eos not in g.token_ids
            assert len(g.token_ids) == 10


def test_stop_strings_cut_text_and_tokens(engine):
    full = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=12))[0][0]
    stop = full.text[5:7]
    cut = full.text.find(stop)
    got = engine.generate(
        [PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=12, stop=(stop,))
    )[0][0]
    assert got.finish_reason == "stop"
    assert got.text == full.text[:cut]
    assert got.token_ids == full.token_ids[: len(got.token_ids)]
    # Minimal: the last kept token is the one that completed the stop string.
    dec = engine.tokenizer.decode
    assert stop in dec(got.token_ids, skip_special_tokens=True)
    assert stop not in dec(got.token_ids[:-1], skip_special_tokens=True)


def test_seeded_sampling_is_reproducible(engine):
    rng_before = torch.get_rng_state()
    a = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, seed=123))
    b = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, seed=123))
    c = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, seed=124))
    assert torch.equal(torch.get_rng_state(), rng_before), "seeded calls must not touch global RNG"

    def tokens(out):
        return [g.token_ids for gens in out for g in gens]

    assert tokens(a) == tokens(b)
    assert [g.logprobs for gens in a for g in gens] == [g.logprobs for gens in b for g in gens]
    assert tokens(a) != tokens(c)
    # The n samples of one prompt are distinct draws, not copies.
    assert a[0][0].token_ids != a[0][1].token_ids


def test_greedy_matches_model_generate(engine, model):
    out = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    for gens, ids in zip(out, engine.encode_prompts(PROMPTS), strict=True):
        with torch.no_grad():
            ref = model.generate(
                torch.tensor([ids]),
                do_sample=False,
                max_new_tokens=10,
                pad_token_id=engine.pad_token_id,
                eos_token_id=engine.eos_token_ids,
            )[0, len(ids) :].tolist()
        assert gens[0].token_ids == ref[: len(gens[0].token_ids)]
        assert gens[0].finish_reason == "stop" or len(ref) == 10


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "mode"),
    [
        (0.7, 0, 1.0, "processed"),
        (1.3, 0, 1.0, "processed"),
        (0.0, 0, 1.0, "processed"),  # greedy: documented as temperature 1
        (0.7, 20, 1.0, "processed"),  # truncation renormalises over the kept tokens
        (0.7, 0, 1.0, "raw"),
    ],
)
def test_logprobs_match_teacher_forcing(engine, model, temperature, top_k, top_p, mode):
    sampling = SamplingParams(
        n=2,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=10,
        seed=7,
        logprobs_mode=mode,
    )
    for gens in engine.generate(PROMPTS, sampling):
        for g in gens:
            logits = teacher_forced_logits(model, g.prompt_ids, g.token_ids)
            if mode == "processed":
                logits = logits / (temperature if temperature > 0 else 1.0)
                if top_k:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
            expected = gathered(torch.log_softmax(logits, dim=-1), g.token_ids)
            torch.testing.assert_close(torch.tensor(g.logprobs), expected, atol=1e-4, rtol=0)


def test_greedy_is_batch_size_invariant(model, tokenizer):
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    prompts = PROMPTS * 2
    one = HFEngine(model, tokenizer, max_batch_size=1).generate(prompts, greedy)
    big = HFEngine(model, tokenizer, max_batch_size=6).generate(prompts, greedy)
    assert [g[0].token_ids for g in one] == [g[0].token_ids for g in big]
    for a, b in zip(one, big, strict=True):
        torch.testing.assert_close(
            torch.tensor(a[0].logprobs), torch.tensor(b[0].logprobs), atol=1e-4, rtol=0
        )


def test_update_weights_switches_to_new_model(tokenizer):
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    old = build_tiny_model(tokenizer, init_std=0.2, seed=0)
    new = build_tiny_model(tokenizer, init_std=0.2, seed=1)
    engine = HFEngine(old, tokenizer)
    reference = HFEngine(new, tokenizer).generate(PROMPTS, greedy)
    before = engine.generate(PROMPTS, greedy)
    assert [g[0].token_ids for g in before] != [g[0].token_ids for g in reference]

    engine.update_weights(new.state_dict())
    after = engine.generate(PROMPTS, greedy)
    assert [g[0].token_ids for g in after] == [g[0].token_ids for g in reference]
    assert [g[0].logprobs for g in after] == [g[0].logprobs for g in reference]

    # (name, tensor) pairs work too, and a subset only touches those parameters.
    engine.update_weights(build_tiny_model(tokenizer, init_std=0.2, seed=0).named_parameters())
    assert engine.generate(PROMPTS, greedy)[0][0].token_ids == before[0][0].token_ids


def test_shared_policy_module_needs_no_sync(tokenizer):
    policy = build_tiny_model(tokenizer, init_std=0.2, seed=0)
    engine = create_engine("transformers", policy, tokenizer)
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    before = engine.generate(PROMPTS, greedy)
    policy.train()
    with torch.no_grad():  # stands in for an optimiser step on the shared module
        policy.load_state_dict(build_tiny_model(tokenizer, init_std=0.2, seed=1).state_dict())
    after = engine.generate(PROMPTS, greedy)
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
    assert policy.training, "generate must restore the module's train/eval mode"


def test_bad_inputs_raise_clear_errors(engine, model, tokenizer):
    with pytest.raises(ValueError, match="token ids"):
        engine.generate(["text", [1, 2]], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="n=0"):
        SamplingParams(n=0)
    with pytest.raises(KeyError, match="not in the model"):
        engine.update_weights({"nope.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights({"lm_head.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="valid names: transformers, vllm"):
        create_engine("sglang", model, tokenizer)
