"""Transformers rollout engine on a tiny random Llama: correctness of tokens, logprobs, stopping."""

from __future__ import annotations

import dataclasses
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
    ("temperature", "top_k", "top_p", "mode", "min_p"),
    [
        (0.7, 0, 1.0, "processed", 0.0),
        (1.3, 0, 1.0, "processed", 0.0),
        (0.0, 0, 1.0, "processed", 0.0),  # greedy: documented as temperature 1
        (0.7, 20, 1.0, "processed", 0.0),  # truncation renormalises over the kept tokens
        (0.7, 0, 1.0, "processed", 0.05),  # min-p: p ≥ 0.05 · max p, then renormalised
        (0.7, 0, 1.0, "raw", 0.0),
    ],
)
def test_logprobs_match_teacher_forcing(engine, model, temperature, top_k, top_p, mode, min_p):
    sampling = SamplingParams(
        n=2,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        max_new_tokens=10,
        seed=7,
        logprobs_mode=mode,
    )
    for gens in engine.generate(PROMPTS, sampling):
        for g in gens:
            logits = teacher_forced_logits(model, g.prompt_ids, g.token_ids)
            if mode == "processed":
                logits = logits / (temperature if temperature > 0 else 1.0)
                if min_p:
                    probs = torch.softmax(logits, dim=-1)
                    low = probs < min_p * probs.max(dim=-1, keepdim=True).values
                    logits = logits.masked_fill(low, float("-inf"))
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


# ------------------------------------------------- prefix sharing, early exit, sampler (issue 12)
def eos_biased_model(tokenizer, seed: int = 3, dtype: torch.dtype = torch.float32):
    """Tiny model whose EOS logit follows one hidden coordinate: rows end at different steps."""
    model = build_tiny_model(tokenizer, init_std=0.2, seed=seed, dtype=dtype)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
        model.lm_head.weight[eos, 0] = 4.0
    return model


def flat(out):
    return [g for gens in out for g in gens]


@pytest.mark.parametrize(
    ("sampling", "batch"),
    [
        (SamplingParams(n=4, max_new_tokens=12, seed=1), 16),
        (SamplingParams(n=4, max_new_tokens=12, seed=1), 6),  # chunks split a prompt's samples
        (SamplingParams(n=3, temperature=0.7, top_k=20, max_new_tokens=12, seed=2), 16),
        (SamplingParams(n=3, temperature=1.3, logprobs_mode="raw", max_new_tokens=12, seed=4), 5),
        (SamplingParams(n=2, temperature=0, max_new_tokens=12), 16),
    ],
)
def test_shared_prefill_and_early_exit_match_model_generate(tokenizer, sampling, batch):
    model = eos_biased_model(tokenizer)
    ours = HFEngine(model, tokenizer, max_batch_size=batch).generate(PROMPTS, sampling)
    reference = HFEngine(model, tokenizer, max_batch_size=batch, use_generate=True)
    theirs = reference.generate(PROMPTS, sampling)
    lengths = {len(g.token_ids) for g in flat(ours)}
    assert len(lengths) > 1, "fixture should end rows at different steps"
    for a, b in zip(flat(ours), flat(theirs), strict=True):
        assert (a.prompt_index, a.sample_index) == (b.prompt_index, b.sample_index)
        assert a.token_ids == b.token_ids
        assert a.finish_reason == b.finish_reason
        torch.testing.assert_close(
            torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0
        )


def test_logprobs_equal_float64_teacher_forcing(tokenizer):
    """Shared prefill, left padding and rows leaving the batch change no position or mask: in
    float64 the recorded log-probs equal a full forward over prompt + completion."""
    model = eos_biased_model(tokenizer, dtype=torch.float64)
    sampling = SamplingParams(n=3, temperature=0.7, top_k=20, max_new_tokens=10, seed=5)
    out = flat(HFEngine(model, tokenizer).generate(PROMPTS, sampling))
    assert len({len(g.token_ids) for g in out}) > 2
    for g in out:
        with torch.no_grad():  # float64 end to end (teacher_forced_logits rounds to float32)
            logits = model(torch.tensor([g.prompt_ids + g.token_ids])).logits[0]
        logits = logits[len(g.prompt_ids) - 1 : -1] / 0.7
        kth = logits.topk(20, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        expected = gathered(torch.log_softmax(logits, dim=-1), g.token_ids)
        got = torch.tensor(g.logprobs, dtype=torch.float64)
        torch.testing.assert_close(got, expected, atol=1e-8, rtol=0)


def count_rows(model):
    """Rows of every forward call of `model` (prefill first)."""
    rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    return rows, hook


def test_finished_rows_cost_no_compute(tokenizer):
    model = eos_biased_model(tokenizer)
    engine = HFEngine(model, tokenizer, max_batch_size=64)
    rows, hook = count_rows(model)
    try:
        out = flat(engine.generate(PROMPTS, SamplingParams(n=8, max_new_tokens=12, seed=0)))
    finally:
        hook.remove()
    lengths = sorted(len(g.token_ids) for g in out)
    assert lengths[0] < lengths[-1], "fixture should end rows at different steps"
    prefill, decode = rows[0], rows[1:]
    assert prefill == len(PROMPTS), "each distinct prompt is prefilled once, not once per sample"
    # One forward per step of the longest row, each over exactly the rows not finished yet.
    assert len(decode) == lengths[-1]
    assert decode == [sum(length > step for length in lengths) for step in range(len(decode))]


@pytest.mark.parametrize("use_generate", [False, True], ids=["decode_loop", "model_generate"])
def test_stop_strings_end_each_row_at_its_match(model, tokenizer, use_generate):
    engine = HFEngine(model, tokenizer, max_batch_size=4, use_generate=use_generate)
    sampling = SamplingParams(n=4, max_new_tokens=16, seed=11)
    full = flat(engine.generate(PROMPTS, sampling))
    # A stop string that some sampled rows contain and others do not.
    stop = next(
        g.text[3:5]
        for g in full
        if len(g.text) > 5 and sum(g.text[3:5] in h.text for h in full) > 1
    )
    assert any(stop not in g.text for g in full)
    cut = flat(engine.generate(PROMPTS, dataclasses.replace(sampling, stop=(stop,))))
    dec = engine.tokenizer.decode
    for whole, got in zip(full, cut, strict=True):
        # Each row draws its own uniforms, so a row is unchanged up to where it stops.
        assert got.token_ids == whole.token_ids[: len(got.token_ids)]
        assert got.logprobs == pytest.approx(whole.logprobs[: len(got.logprobs)], abs=1e-5)
        if stop in whole.text:
            assert got.finish_reason == "stop"
            assert got.text == whole.text[: whole.text.find(stop)]
            assert stop in dec(got.token_ids, skip_special_tokens=True)
            assert stop not in dec(got.token_ids[:-1], skip_special_tokens=True)
        else:
            assert (got.token_ids, got.finish_reason) == (whole.token_ids, whole.finish_reason)


def test_sample_rows_draws_in_proportion_and_never_a_zero():
    from alignlib.rollout.hf_sampler import BLOCK, sample_rows

    vocab = BLOCK + 44  # two blocks, the second padded; zeros after the last positive entry
    probs = torch.zeros(vocab)
    probs[[3, 7, BLOCK - 1, BLOCK + 2, BLOCK + 40]] = torch.tensor([0.1, 1e-4, 0.3, 0.4, 0.2])
    # Draws (in units of the total mass) just inside each token's interval of the cumulative sum,
    # and 1.0, past the end as rounding could put it: the last positive entry, not a zero after it.
    total = probs.double().sum()
    draws = torch.tensor([0.0, 0.0999, 0.10005, 0.4, 0.8, 1.0], dtype=torch.float64)
    expected = [3, 3, 7, BLOCK - 1, BLOCK + 2, BLOCK + 40]
    rows = probs.expand(len(draws), -1).contiguous()
    assert sample_rows(rows, draws / total).tolist()[:5] == expected[:5]
    assert sample_rows(rows, torch.ones(len(draws), dtype=torch.float64)).tolist() == [
        BLOCK + 40
    ] * len(draws)
    # Frequencies over 200k draws, each within 6 standard deviations of its probability.
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(vocab, dtype=torch.float64)
    batch = probs.expand(20_000, -1)
    for _ in range(10):
        uniforms = torch.rand(len(batch), dtype=torch.float64, generator=generator)
        counts += torch.bincount(sample_rows(batch, uniforms), minlength=vocab)
    target = probs.double() / total
    sigma = (counts.sum() * target * (1 - target)).sqrt()
    assert torch.all(counts[target == 0] == 0), "a zero-probability token was drawn"
    assert torch.all((counts - counts.sum() * target).abs() <= 6 * sigma + 1e-9)
