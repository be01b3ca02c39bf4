"""Packed (padding-free) forwards and token-budget micro-batches, in float64 on a CPU.

Packing concatenates a micro-batch's rows with position ids restarting per row; its log-probs,
entropies and gradients must equal the padded path's (the reference here is plain
``token_logprobs`` on right-padded rows, computing every position) in each decoder route the
CPU can run — one row at a time, and one call with transformers' block-diagonal mask — for a
tiny Llama and a tiny Qwen2. A token budget only moves rows between passes: the DPO and GRPO
gradients of a mini-batch split by rows or by tokens (packed or padded) are the same."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path
from typing import Any

import device_cases
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from device_cases import write_config
from torch import Tensor, nn
from transformers import Qwen2Config, Qwen2ForCausalLM

import alignlib.trainer.logprobs as logprobs_module
import alignlib.trainer.step as step_module
from alignlib import algorithms
from alignlib.config import ConfigError, load_config
from alignlib.data.collate import Example
from alignlib.device import HOST, Placement
from alignlib.estimator import Role, UnifiedEstimator
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.loop import Trainer
from alignlib.trainer.offline import cache_logprobs, offline_minibatch
from alignlib.trainer.online_passes import policy_logprobs
from alignlib.trainer.online_rollout import TrainRows
from alignlib.trainer.online_update import RolloutPasses, collate_rows, online_minibatch
from alignlib.trainer.packing import (
    MicroBatching,
    decoder_kwargs,
    pack,
    packed_token_logprobs,
    packing_mode,
    unpack,
)
from alignlib.trainer.step import HostRows, LogprobKernel
from alignlib.trainer.update import MiniBatch, accumulate
from alignlib.trainer.world import World

CPU64 = Placement(HOST, "fp32")  # the kernel's device; the models below are float64
LENGTHS = [13, 6, 10, 3, 8]
STARTS = [5, 2, 4, 1, 3]  # first completion (scored) token of each row
EXACT = {"rtol": 1e-12, "atol": 1e-12}
PLAIN_CONFIG = device_cases.write_config


def tiny_qwen2(vocab: int) -> nn.Module:
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Qwen2ForCausalLM(config).to(torch.float64).eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request: pytest.FixtureRequest) -> nn.Module:
    tokenizer = build_tokenizer()
    if request.param == "qwen2":
        return tiny_qwen2(len(tokenizer))
    # init_std 0.5: peaky distributions, so rows that attended to each other would differ.
    return build_tiny_model(tokenizer, dtype=torch.float64, init_std=0.5)


@pytest.fixture(params=[0, None], ids=["memory-floor-head", "chunked-head"])
def head_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param is not None:
        monkeypatch.setattr(logprobs_module, "FLOOR_FROM_BYTES", request.param)


def padded(vocab: int, left: bool = False, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """[R, W] ids, attention and scored mask of rows of LENGTHS (right-padded as the collators
    write them, or left-padded)."""
    width = max(LENGTHS)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    scored = torch.zeros(len(LENGTHS), width, dtype=torch.float64)
    for r, (length, start) in enumerate(zip(LENGTHS, STARTS, strict=True)):
        cols = slice(width - length, width) if left else slice(0, length)
        ids[r, cols] = torch.randint(3, vocab, (length,), generator=gen)
        attention[r, cols] = 1
        scored[r, cols][start:] = 1
    return ids, attention, scored


def packed_values(
    model: nn.Module, rows: tuple[Tensor, Tensor, Tensor], per_row: bool
) -> tuple[Tensor, Tensor]:
    """[R, W] log-probs and entropies through the packed forward, unpacked."""
    packed = pack(*rows)
    lengths = packed.cu_seq_lens.diff().tolist() if per_row else None
    logps, ents = packed_token_logprobs(
        model,
        packed.input_ids,
        packed.position_ids,
        packed.scored,
        chunk_size=4,
        with_entropy=True,
        row_lengths=lengths,
    )
    assert ents is not None
    width = rows[0].shape[1]
    return unpack(logps, packed, width), unpack(ents, packed, width)


# Eager attention takes its softmax in float32 whatever the model's dtype: float32 rounding
# (a row attending to another row would be off by more than 1e-3: see the control below).
TOLERANCE = {"sdpa": EXACT, "eager": {"rtol": 1e-6, "atol": 1e-5}}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("per_row", [True, False], ids=["rows", "block-mask"])
def test_packed_logprobs_and_entropy_equal_the_padded_ones(
    model: nn.Module, attention: str, per_row: bool, head_path: None
) -> None:
    model.set_attn_implementation(attention)
    tolerance = TOLERANCE[attention]
    rows = padded(model.config.vocab_size)
    reference, ref_entropy = logprobs_module.token_logprobs(
        model, rows[0], rows[1], chunk_size=4, with_entropy=True
    )
    assert ref_entropy is not None
    logps, ents = packed_values(model, rows, per_row)
    scored = rows[2].bool()
    scored[:, 0] = False  # a row's first token has nothing before it: never scored
    torch.testing.assert_close(logps[scored], reference[scored], **tolerance)
    torch.testing.assert_close(ents[scored], ref_entropy[scored], **tolerance)
    # Nothing else was computed: prompt and padding columns hold 0.
    assert logps[~scored].abs().max() == 0 and ents[~scored].abs().max() == 0
    model.set_attn_implementation("sdpa")


def test_positions_that_do_not_restart_would_be_caught(model: nn.Module) -> None:
    """The control: one sequence with running positions (rows attending to the rows before
    them) is far from the padded values, so the exactness tests can fail."""
    rows = padded(model.config.vocab_size)
    packed = pack(*rows)
    running = torch.arange(packed.input_ids.shape[1]).unsqueeze(0)
    logps, _ = packed_token_logprobs(model, packed.input_ids, running, packed.scored)
    reference, _ = logprobs_module.token_logprobs(model, rows[0], rows[1])
    wrong = unpack(logps, packed, rows[0].shape[1]) - reference
    assert wrong[rows[2].bool()].abs().max() > 1e-3


def test_left_and_right_padding_pack_alike(model: nn.Module) -> None:
    right, left = padded(model.config.vocab_size), padded(model.config.vocab_size, left=True)
    a, b = pack(*right), pack(*left)
    for name in ("input_ids", "position_ids", "scored", "rows", "cu_seq_lens"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    shift = torch.tensor([max(LENGTHS) - n for n in LENGTHS])
    assert torch.equal(b.columns, a.columns + shift[a.rows])
    assert a.position_ids[0, a.cu_seq_lens[:-1].long()].eq(0).all()  # restart at every row


def test_padding_inside_a_row_is_refused() -> None:
    attention = torch.tensor([[1, 0, 1, 0]])
    with pytest.raises(ValueError, match="not contiguous"):
        pack(torch.zeros(1, 4, dtype=torch.long), attention, attention.double())


@pytest.mark.parametrize("per_row", [True, False], ids=["rows", "block-mask"])
def test_gradients_equal_the_padded_ones(model: nn.Module, per_row: bool, head_path: None) -> None:
    rows = padded(model.config.vocab_size)
    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(rows[2].shape, generator=gen, dtype=torch.float64) * rows[2]
    spread = torch.randn(rows[2].shape, generator=gen, dtype=torch.float64) * rows[2]

    def grads(packed: bool) -> dict[str, Tensor]:
        model.zero_grad(set_to_none=True)
        if packed:
            logps, ents = packed_values(model, rows, per_row)
        else:
            logps, ents = logprobs_module.token_logprobs(
                model, rows[0], rows[1], chunk_size=4, with_entropy=True
            )
        ((weights * logps).sum() + (spread * ents).sum()).backward()
        return param_grads(model)

    padded_grads, packed_grads = grads(False), grads(True)
    assert padded_grads.keys() == packed_grads.keys() and len(padded_grads) > 4
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, **EXACT, msg=name)
    model.zero_grad(set_to_none=True)


def test_the_kernel_packs_into_the_padded_layout(model: nn.Module) -> None:
    ids, attention, scored = padded(model.config.vocab_size)
    rows = HostRows(ids, attention, scored)
    indices = torch.tensor([3, 0, 2])
    plain = LogprobKernel(model, CPU64, chunk_size=4)
    packing = LogprobKernel(model, CPU64, chunk_size=4, packing=True)
    assert plain.pack_mode is None and packing.pack_mode == "rows"
    a = plain(rows, indices, with_entropy=True, grad=False)
    b = packing(rows, indices, with_entropy=True, grad=False)
    assert a.width == b.width == max(LENGTHS[i] for i in indices.tolist())
    read = scored[indices, : a.width].bool()
    torch.testing.assert_close(b.logprobs[read], a.logprobs[read], **EXACT)
    assert a.entropy is not None and b.entropy is not None
    torch.testing.assert_close(b.entropy[read], a.entropy[read], **EXACT)
    # A hook on the LM head (the kept-mass pass) reads the padded layout: that pass is padded.
    handle = model.get_output_embeddings().register_forward_hook(lambda *_: None)
    try:
        assert packing.pack_mode is None
    finally:
        handle.remove()


def test_token_budget_passes_keep_units_whole_and_within_budget() -> None:
    lengths = torch.tensor([5, 9, 3, 3, 12, 4, 4, 30, 2, 6])
    units = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])]
    units += [torch.tensor([6]), torch.tensor([7]), torch.tensor([8, 9])]
    for packed in (True, False):
        split = MicroBatching(2, max_tokens=24, packed=packed)
        passes = split.split(units, lengths)
        assert torch.equal(torch.cat(passes), torch.arange(10))  # every row once, in order
        bounds = {int(u[0]) for u in units}
        for rows in passes:
            assert int(rows[0]) in bounds  # a pass starts at a unit: none is split
            cost = [int(n) for n in lengths[rows]]
            total = sum(cost) if packed else len(cost) * max(cost)
            alone = any(torch.equal(rows, u) for u in units)
            assert total <= 24 or alone
        # Greedy: no pass could have taken the next unit.
        for rows, after in itertools.pairwise(passes):
            unit = next(u for u in units if int(u[0]) == int(after[0]))
            assert split.cost([int(n) for n in lengths[torch.cat([rows, unit])]]) > 24
    assert len(MicroBatching(2, 24, packed=True).split(units, lengths)) < len(
        MicroBatching(2, 24, packed=False).split(units, lengths)
    )
    by_rows = MicroBatching(2).split(units, lengths)
    assert [p.tolist() for p in by_rows] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def pair_examples(vocab: int, count: int = 6) -> list[Example]:
    gen = torch.Generator().manual_seed(2)

    def tokens(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=gen).tolist()

    examples = []
    for i in range(count):
        prompt = tokens(2 + 3 * (i % 3))
        chosen, rejected = tokens(2 + (5 * i) % 11), tokens(3 + (3 * i) % 7)
        sequences = [prompt + chosen, prompt + rejected]
        examples.append(Example(i, sequences, [len(prompt)] * 2, [Role.CHOSEN, Role.REJECTED]))
    return examples


def param_grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def gradient(
    model: nn.Module, kernel: LogprobKernel, estimator: UnifiedEstimator, batch: MiniBatch
) -> dict[str, Any]:
    """The loss metrics and parameter gradients of one accumulated mini-batch."""
    model.zero_grad(set_to_none=True)
    metrics, _ = accumulate(kernel, estimator, batch)
    grads = param_grads(model)
    model.zero_grad(set_to_none=True)
    return {"metrics": metrics, **grads}


def assert_same_gradients(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys() and len(a) > 4
    torch.testing.assert_close(a["metrics"]["loss"], b["metrics"]["loss"], **EXACT)
    for name in a.keys() - {"metrics"}:
        torch.testing.assert_close(b[name], a[name], **EXACT, msg=name)


def budget_passes(batch: MiniBatch, budget: int, packed: bool) -> None:
    """Every pass of ``batch`` holds at most ``budget`` tokens as the kernel counts them."""
    for rows in batch.micro_batches:
        lengths = batch.rows.attention[rows].sum(-1).tolist()
        assert MicroBatching(1, budget, packed).cost(lengths) <= budget


@pytest.mark.parametrize("budget", [50, 64])
def test_dpo_gradient_is_the_same_split_by_rows_or_by_tokens(budget: int) -> None:
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, dtype=torch.float64, init_std=0.5).train()
    estimator = algorithms.get("dpo", beta=0.5)
    needs, pad = estimator.requirements(), tokenizer.pad_token_id
    examples = pair_examples(model.config.vocab_size)
    plain = LogprobKernel(model, CPU64, chunk_size=4)
    gen = torch.Generator().manual_seed(3)
    ref = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in
           cache_logprobs(plain, examples, pad, 4).items()}  # fmt: skip
    whole = offline_minibatch(examples, pad, needs, len(examples), ref)
    expected = gradient(model, plain, estimator, whole)
    by_rows = offline_minibatch(examples, pad, needs, 2, ref)
    assert_same_gradients(expected, gradient(model, plain, estimator, by_rows))
    for packing in (False, True):
        kernel = LogprobKernel(model, CPU64, chunk_size=4, packing=packing, max_tokens=budget)
        batch = offline_minibatch(examples, pad, needs, kernel.batching(2), ref)
        assert len(batch.micro_batches) not in (1, len(examples))  # really split otherwise
        assert all(len(rows) % 2 == 0 for rows in batch.micro_batches)  # whole pairs
        budget_passes(batch, budget, packing)
        assert_same_gradients(expected, gradient(model, kernel, estimator, batch))


def online_rows(vocab: int) -> TrainRows:
    gen = torch.Generator().manual_seed(4)
    rows = TrainRows()
    for group in range(2):
        prompt = torch.randint(3, vocab, (3 + 4 * group,), generator=gen).tolist()
        for i in range(4):
            completion = torch.randint(3, vocab, (2 + 3 * i,), generator=gen).tolist()
            rows.add(prompt, completion, Role.SAMPLE, group, float((i + group) % 3))
    return rows


def test_grpo_gradient_is_the_same_split_by_rows_or_by_tokens() -> None:
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, dtype=torch.float64, init_std=0.5).train()
    estimator = algorithms.get("grpo")
    tensors = collate_rows(online_rows(model.config.vocab_size), tokenizer.pad_token_id)
    every = torch.arange(tensors.num_rows)
    plain = LogprobKernel(model, CPU64, chunk_size=4)
    old, _ = policy_logprobs(plain, tensors, every, 3)
    old = old.double() - 0.05  # off-policy: ratios away from 1

    def batch(split: int | MicroBatching) -> MiniBatch:
        return online_minibatch(tensors, every, RolloutPasses(old=old), split)

    expected = gradient(model, plain, estimator, batch(tensors.num_rows))
    assert_same_gradients(expected, gradient(model, plain, estimator, batch(3)))
    for packing in (False, True):
        kernel = LogprobKernel(model, CPU64, chunk_size=4, packing=packing, max_tokens=30)
        split = batch(kernel.batching(3))
        assert 1 < len(split.micro_batches) < tensors.num_rows
        budget_passes(split, 30, packing)
        assert_same_gradients(expected, gradient(model, kernel, estimator, split))


def test_a_run_with_packing_and_a_budget_trains_as_a_padded_one(tmp_path: Path) -> None:
    """The config reaches the kernel and the source: one DPO step's gradient through the
    trainer equals the padded, row-count step's, with every tensor placed explicitly (the
    device audit of tests/test_device.py: ``meta`` as the default device)."""
    path = write_config(tmp_path, "dpo", "cpu")
    results = []
    for overrides in ([], ["train.packing=true", "train.max_tokens_per_micro_batch=40"]):
        trainer = Trainer(load_config(path, [*overrides, f"output_dir={tmp_path}/{len(results)}"]))
        trainer.model.double()
        source = trainer.source()
        state = trainer.state(source)
        with torch.device("meta"):
            source.prepare(state)
            batch = next(iter(source.batches(1)))
            metrics, _ = accumulate(source.kernel, state.estimator, batch)
        assert source.kernel.packing == bool(overrides)
        step = {"metrics": metrics, **param_grads(trainer.model)}
        results.append((step, len(batch.micro_batches)))
    (padded_step, padded_passes), (packed_step, packed_passes) = results
    assert packed_passes != padded_passes
    assert_same_gradients(padded_step, packed_step)


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_token_budget_is_refused_in_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"train.max_tokens_per_micro_batch={value}"])
    message = str(error.value)
    assert "train.max_tokens_per_micro_batch" in message and "\n" not in message


def test_packing_is_off_and_the_budget_unset_by_default() -> None:
    train = load_config(None, []).train
    assert train.packing is False and train.max_tokens_per_micro_batch is None


def _packed_config(tmp: Path, case: str, device: str, precision: str = "fp32") -> Path:
    path = PLAIN_CONFIG(tmp, case, device, precision)
    config = yaml.safe_load(path.read_text())
    config["train"].update(packing=True, max_tokens_per_micro_batch=40)
    path.write_text(yaml.safe_dump(config))
    return path


def _sharded_rank(rank: int, port: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        device_cases.write_config = _packed_config
        modes: set[str | None] = set()
        choose = step_module.packing_mode

        def spy(*args: Any) -> Any:
            modes.add(choose(*args)[0])
            return choose(*args)

        step_module.packing_mode = spy  # type: ignore[assignment]
        tmp = Path(folder) / f"rank{rank}"
        tmp.mkdir(parents=True, exist_ok=True)
        world = World(rank, 2, sharded=True)
        metrics, grads, _ = device_cases.run_case(tmp, "dpo", "cpu", world=world, float64=True)
        torch.save({"metrics": metrics, **grads}, Path(folder) / f"rank{rank}.pt")
        (Path(folder) / f"modes{rank}").write_text(repr(sorted(map(str, modes))))
    finally:
        dist.destroy_process_group()


def test_fsdp2_packed_passes_give_the_one_process_padded_gradient(tmp_path: Path) -> None:
    """An FSDP2-sharded policy packs with transformers' block-diagonal mask (its units run
    once per pass): two gloo ranks, packed and split by a token budget, give one padded
    process's DPO gradient."""
    torch.set_num_threads(1)
    (tmp_path / "one").mkdir()
    metrics, grads, _ = device_cases.run_case(tmp_path / "one", "dpo", "cpu", float64=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    mp.start_processes(_sharded_rank, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert_same_gradients({"metrics": metrics, **grads}, got)
        assert (tmp_path / f"modes{rank}").read_text() == "['mask']"  # it did pack


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["sdpa", "flash_attention_2"])
def test_packed_equals_padded_on_cuda(attention: str) -> None:
    """On a GPU: the block-diagonal mask (sdpa) or FlashAttention's varlen kernel, fp32 model,
    against the padded forward (TF32 off, so only kernel rounding differs)."""
    if attention == "flash_attention_2":
        pytest.importorskip("flash_attn")
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(device_cases.ACCELERATOR)
    model = build_tiny_model(build_tokenizer(), hidden=64, layers=2).to(device)
    model.set_attn_implementation(attention)
    rows = padded(model.config.vocab_size)
    reference, _ = logprobs_module.token_logprobs(model, rows[0].to(device), rows[1].to(device))
    packed = pack(*rows)
    mode, why = packing_mode(model, device, sharded=False)
    expected = "varlen" if attention.startswith("flash") else "mask"
    assert mode == (expected if device.type == "cuda" else "rows"), why
    logps, _ = packed_token_logprobs(
        model,
        packed.input_ids.to(device),
        packed.position_ids.to(device),
        packed.scored.to(device),
        chunk_size=4,
        with_entropy=False,
        **decoder_kwargs(mode, packed, device),
    )
    logps = unpack(logps.cpu(), packed, rows[0].shape[1])
    scored = rows[2].bool()
    scored[:, 0] = False
    torch.testing.assert_close(logps[scored], reference.cpu()[scored], rtol=1e-4, atol=1e-4)
