"""One training step of each kind (offline DPO / SFT / TPO / KTO with their reference passes, a
reward model's Bradley-Terry step, a process reward model's with label tokens as targets,
online GRPO / HPT / Clip-Cov / GRPO+KL / OPD with their old-log-prob passes, OPD's from a named
teacher, PPO-GAE with its critic's pass and step, GRPO on forking tokens, GDPO) on a chosen
device, returning the loss metrics and the parameter gradients — shared by the CPU
device-audit tests and the GPU parity tests, so the GPU tests run code the CPU suite already
exercises."""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from alignlib.config import load_config
from alignlib.estimator import Role
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.critic import train_critic
from alignlib.trainer.loop import Trainer
from alignlib.trainer.online_passes import PassPlan
from alignlib.trainer.online_rollout import TrainRows
from alignlib.trainer.online_update import collate_rows, online_minibatch, rollout_advantages
from alignlib.trainer.state import TrainState
from alignlib.trainer.update import accumulate
from alignlib.trainer.world import SINGLE, World

PAIRS = [
    {"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1} or so"}
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)]
]
OFFLINE = {
    "dpo": "preference",
    "sft": "sft",
    "tpo": "tpo",
    "kto": "kto",
    "aot": "preference",
    "reward_model": "preference",  # a score head on the decoder, no LM head
    "dpo_wpo": "preference",  # WPO's no-grad pass through a hooked head; LD-DPO's likelihood
    "prm": "stepwise",  # a process reward model: SFT on label tokens given as targets
    "dpo_live": "preference",  # π_ref a frozen copy scored per micro-batch (train.reference: live)
}
ONLINE = {
    "grpo": {},
    "hpt": {},
    "clip_cov": {"ratio": 0.2},  # high enough that the tiny batch drops some tokens
    "grpo_kl": {"kl_coef": 0.1},
    "opd": {"iw_gamma": 0.5},  # π_ref is a named teacher (model.reference_name_or_path)
    "ppo_gae": {},  # a critic's values pass and its own step, then GAE (KL in the reward)
    "grpo_forking": {},  # the high-entropy mask: entropies of the old pass, selected globally
    "gdpo": {},  # each reward normalized in its group, then over the batch
    "rloo": {},  # whole-sequence units; the KL in the reward reads π_old and π_ref in prepare
    "gmpo": {},  # a row's geometric mean of clipped token ratios, inside the mask
    "dppo": {},  # the sampling engine's log-probs reach the device (a trust region around μ)
    "remax": {},  # the greedy completion's reward travels with the rows (baseline_rewards)
    "topr": {"baseline": 1.0},  # rows below the baseline: the truncated sequence ratio
    "otb": {},  # log Σπ_old² from a head hook in the old pass, on the device
    "m2po": {},  # the second-moment mask from the present policy's no-grad pass, on the device
    "raft_pp": {},  # a row filter on rewards, then the per-sample mean over the rows kept
    "gigpo": {},  # int64 state ids ride with the rows to the device; entropy bonus, KL
}
CASES = [*OFFLINE, *ONLINE]
# Where the `gpu` tests put the model: CUDA, or the CPU when ALIGNLIB_TEST_ACCELERATOR=cpu
# rehearses them (`DRY=1 bash benchmarks/gpu/check.sh`), so that a bug in a test's own code
# shows on the CPU machine instead of costing a lent GPU's only call.
ACCELERATOR = os.environ.get("ALIGNLIB_TEST_ACCELERATOR", "cuda")


def write_config(tmp: Path, case: str, device: str, precision: str = "fp32") -> Path:
    offline = case in OFFLINE
    rows: list[dict[str, Any]] = PAIRS
    if case == "sft":
        rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
    elif case == "tpo":
        rows = [{**p, "reference": f"It is {p['chosen']}"} for p in PAIRS]
    elif case == "kto":  # unpaired: the KL rows take a no-grad pass, no gradient pass
        rows = [
            {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
            for p in PAIRS
            for key in ("chosen", "rejected")
        ]
    elif case == "prm":  # each sum a step, labelled right or wrong
        rows = [
            {
                "prompt": p["prompt"],
                "completions": [p["chosen"], p["rejected"]],
                "labels": [True, False],
            }
            for p in PAIRS
        ]
    elif not offline:
        rows = [
            {"prompt": p["prompt"], "answer": p["chosen"], "solution": f"It is {p['chosen']}"}
            for p in PAIRS
        ]
    data = tmp / f"{case}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    aliases = {"grpo_kl": "grpo", "dpo_wpo": "dpo", "dpo_live": "dpo", "prm": "sft"}
    name = (aliases | {"grpo_forking": "grpo"}).get(case, case)
    cfg: dict[str, Any] = {
        "output_dir": str(tmp / f"run-{case}-{device}"),
        "model": {"name_or_path": "tiny:llama", "device": device, "precision": precision},
        "data": {"path": str(data), "shuffle": False},
        "algorithm": {"name": name, "params": ONLINE.get(case, {})},
        "train": {"batch_size": 4, "micro_batch_size": 2, "max_steps": 1},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    if case == "tpo":
        cfg["train"]["reference"] = "none"
    if case == "dpo_live":
        cfg["train"]["reference"] = "live"
    if case == "dpo_wpo":
        cfg["algorithm"] |= {"wpo": True, "ld_alpha": 0.5}
    if case == "grpo_forking":
        cfg["algorithm"]["high_entropy"] = {"ratio": 0.4}
    if case == "prm":
        cfg["data"]["format"] = "stepwise"
    if case == "opd":
        cfg["model"]["reference_name_or_path"] = str(save_teacher(tmp / "teacher"))
    if not offline:
        cfg["rollout"] = {"n": 4, "max_new_tokens": 4}
        cfg["online"] = {"prompts_per_step": 2, "micro_batch_size": 3}
    path = tmp / f"{case}-{device}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def save_teacher(folder: Path) -> Path:
    """A tiny:llama-shaped model with another, peakier initialisation (a distillation teacher).
    Written file by file: under torch.distributed, ``save_pretrained`` writes on rank 0 only,
    and each data-parallel rank of these tests has its own folder."""
    if not (folder / "config.json").is_file():
        tokenizer = build_tokenizer()
        model = build_tiny_model(tokenizer, hidden=64, layers=2, seed=1, init_std=0.3)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
        model.config.to_json_file(folder / "config.json")
        tokenizer.save_pretrained(folder)
    return folder


def online_rows(vocab: int, with_demo: bool, seed: int = 0) -> TrainRows:
    """Two groups of four rows of random tokens, unequal lengths, one group all-equal rewards
    (two rewards' own values, weighted 1 and 0.5, for GDPO; a greedy reward per group, for
    ReMax); with ``with_demo`` the first row of group 0 is an SFT (demonstration) row, as HPT
    routes."""
    gen = torch.Generator().manual_seed(seed)
    rows = TrainRows(reward_weights=[1.0, 0.5])
    for group in range(2):
        prompt = torch.randint(3, vocab, (5 + group,), generator=gen).tolist()
        for i in range(4):
            completion = torch.randint(3, vocab, (3 + i,), generator=gen).tolist()
            role = Role.DEMO if with_demo and group == 0 and i == 0 else Role.SAMPLE
            reward = float(i % 2) if group == 0 else 1.0
            parts = [reward, float(i) / 4]  # the second reward differs within both groups
            total = reward + 0.5 * parts[1]
            rows.add(prompt, completion, role, group, total, parts=parts, baseline=0.5 * group)
    return rows


def run_case(
    tmp: Path,
    case: str,
    device: str,
    precision: str = "fp32",
    audit: bool = False,
    world: World = SINGLE,
    float64: bool = False,
) -> tuple[dict[str, float], dict[str, torch.Tensor], torch.device]:
    """(metrics, {param name: grad on the CPU}, device the log-probs were on) of one step.

    ``audit`` runs everything a step builds (collation, the kernel, the estimator, backward)
    with ``torch.device("meta")`` as the default device: a tensor created without an explicit
    device then lands on ``meta`` and the step fails, so only code that says where each tensor
    goes (the policy's device, or the host for collation) passes.
    """
    trainer = Trainer(load_config(write_config(tmp, case, device, precision)), world=world)
    if float64:  # exactness tests: no fp32 rounding between the compared paths
        trainer.model.double()
    guard: AbstractContextManager = torch.device("meta") if audit else nullcontext()
    if case in OFFLINE:
        source = trainer.source()
        state = trainer.state(source)
        with guard:  # the reference cache, collation, the kernel, the estimator, backward
            source.prepare(state)
            batch = next(iter(source.batches(1)))
            metrics, _ = accumulate(source.kernel, state.estimator, batch)
        world.sync_gradients(trainer.model)
        where = source.kernel.device
    else:
        vocab = trainer.model.get_input_embeddings().num_embeddings
        rows = online_rows(vocab, with_demo=case == "hpt")
        state = TrainState.create(
            trainer.config, trainer.model, trainer.tokenizer, trainer.estimator,
            trainer.placement, 1, world,
        )  # fmt: skip
        kernel = state.kernel(temperature=0.9)
        reference = None
        needs = state.estimator.requirements()
        if "ref_logprobs" in needs:  # as OnlineSource.prepare does
            reference = state.reference_kernel(0.9)
        plan = PassPlan(
            old=True, truncation=None, collision="old_log_sum_sq_probs" in needs, engine=False
        )
        with guard:
            tensors = collate_rows(rows, state.pad_id)
            passes = plan.run(kernel, tensors, 3, reference)  # as OnlineSource.batches does
            values = None if state.critic is None else state.critic.values(tensors.host, 3)
            # The advantages over the rollout batch, as the online source hands them to each of
            # its mini-batches (here one: the same numbers, through the same path).
            given = rollout_advantages(
                state.estimator, tensors, kernel.device, passes, values=values
            )
            every = torch.arange(tensors.num_rows, device="cpu")
            batch = online_minibatch(tensors, every, passes, 3, given)
            if state.critic is not None and values is not None:  # the critic's step
                batch = train_critic(state.critic, state.estimator, batch, values, 1)
            metrics, entropy = accumulate(kernel, state.estimator, batch)
        world.sync_gradients(trainer.model)
        assert entropy is not None
        where = entropy.device
    grads = {}
    for name, param in trainer.model.named_parameters():
        if param.grad is not None:
            full = getattr(param.grad, "full_tensor", None)  # FSDP2: gather the shards
            grads[name] = (full() if full is not None else param.grad).detach().cpu()
    return metrics, grads, where
