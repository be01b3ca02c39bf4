"""Extra peak memory and time of per-token log-probs + entropy over a large LM head.

Three paths over the same hidden states [1, T, hidden] and head [V, hidden]:

* ``naive``: full logits, fp32 ``log_softmax``, autograd through it;
* ``old``: alignlib's previous chunked path (a copy below: per-chunk ``LogprobEntropy`` that
  keeps each chunk's fp32 logits for the backward);
* ``new``: ``alignlib.trainer.logprobs.token_logprobs`` (``LinearLogprobEntropy``).

Modes: ``train`` (forward + backward, the head weight trainable: full fine-tuning), ``frozen``
(forward + backward, head frozen: LoRA), ``nograd`` (the reference / old-log-prob pass).
Every (path, mode, T) runs in a fresh subprocess. Extra peak = peak − memory before the call,
minus the head's parameter gradient (CPU: the process's VmHWM, reset through
/proc/self/clear_refs; CUDA: ``torch.cuda.max_memory_allocated``).

    python benchmarks/logprob_memory.py                      # CPU, bf16 autocast, T 512 and 4096
    python benchmarks/logprob_memory.py --precision fp32 --tokens 512
    python benchmarks/logprob_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from alignlib.trainer.logprobs import token_logprobs

MiB = 2**20


class OldLogprobEntropy(torch.autograd.Function):
    """The previous kernel, verbatim in behaviour: saves the chunk's fp32 logits."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Any:
        logsumexp = torch.logsumexp(logits, dim=-1)
        chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logsumexp
        probs = torch.exp(logits - logsumexp.unsqueeze(-1))
        expected = (probs.unsqueeze(-2) @ logits.unsqueeze(-1)).reshape(logsumexp.shape)
        entropy = logsumexp - expected
        ctx.save_for_backward(logits, targets, logsumexp, entropy)
        return chosen, entropy

    @staticmethod
    def backward(ctx: Any, grad_chosen: Tensor, grad_entropy: Tensor) -> Any:
        logits, targets, logsumexp, entropy = ctx.saved_tensors
        logp = logits - logsumexp.unsqueeze(-1)
        probs = logp.exp()
        coef = logp.add_(entropy.unsqueeze(-1)).mul_(-grad_entropy.unsqueeze(-1))
        grad = probs.mul_(coef.sub_(grad_chosen.unsqueeze(-1)))
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad_chosen.unsqueeze(-1))
        return grad, None


def old_path(hidden: Tensor, head: nn.Module, targets: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """The previous token_logprobs loop (after the decoder), with entropy."""
    logps, ents = [], []
    for start in range(0, hidden.shape[1], chunk):
        logits = head(hidden[:, start : start + chunk])
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            lp, ent = OldLogprobEntropy.apply(logits, targets[:, start : start + chunk])
        logps.append(lp)
        ents.append(ent)
    return torch.cat(logps, 1), torch.cat(ents, 1)


def naive_path(hidden: Tensor, head: nn.Module, targets: Tensor) -> tuple[Tensor, Tensor]:
    logp = torch.log_softmax(head(hidden).float(), dim=-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def new_path(hidden: Tensor, head: nn.Module, ids: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """token_logprobs on a stub model whose decoder returns ``hidden``: the real entry point."""
    stub = SimpleNamespace(
        get_decoder=lambda: lambda **_: SimpleNamespace(last_hidden_state=hidden),
        get_output_embeddings=lambda: head,
    )
    logprobs, entropy = token_logprobs(stub, ids, torch.ones_like(ids), chunk_size=chunk,
                                       with_entropy=True)  # fmt: skip
    assert entropy is not None
    return logprobs[:, 1:], entropy[:, 1:]


def current_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.memory_allocated()
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so reuse cannot hide a peak
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS


def peak_bytes(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration: a warm-up, one measured call for memory, then timed repeats."""
    torch.manual_seed(0)
    dev, tokens = args.device, args.tokens[0]
    hidden_dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    head = nn.Linear(args.hidden, args.vocab, bias=False, device=dev)
    head.weight.requires_grad_(args.mode == "train")
    hidden = torch.randn(1, tokens, args.hidden, device=dev, dtype=hidden_dtype)
    hidden.requires_grad_(args.mode != "nograd")
    ids = torch.randint(0, args.vocab, (1, tokens), device=dev)
    g_y, g_h = torch.randn(2, 1, tokens - 1, device=dev)
    autocast = (
        torch.autocast(dev, dtype=torch.bfloat16)
        if args.precision == "bf16-mixed"
        else nullcontext()
    )

    def step() -> None:
        head.weight.grad = hidden.grad = None
        with torch.set_grad_enabled(args.mode != "nograd"), autocast:
            h, t = hidden[:, :-1], ids[:, 1:]
            if args.path == "new":
                lp, ent = new_path(hidden, head, ids, args.chunk_size)
            elif args.path == "old":
                lp, ent = old_path(h, head, t, args.chunk_size)
            else:
                lp, ent = naive_path(h, head, t)
        if args.mode != "nograd":
            torch.autograd.backward((lp, ent), (g_y, g_h))

    step()  # warm-up (allocator, thread pools)
    head.weight.grad = hidden.grad = None
    reset_peak(dev)
    before = current_bytes(dev)
    step()
    grad_bytes = 0 if head.weight.grad is None else head.weight.grad.nbytes
    extra = peak_bytes(dev) - before - grad_bytes
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize() if dev == "cuda" else None
        times.append(time.perf_counter() - start)
    logits_bytes = (tokens - 1) * args.vocab * 4
    return {
        "extra_mib": extra / MiB,
        "x_logits": extra / logits_bytes,
        "logits_mib": logits_bytes / MiB,
        "seconds": statistics.median(times),
    }


def run_one(args: argparse.Namespace, path: str, mode: str, tokens: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "--path", path, "--mode", mode]
    command += ["--tokens", str(tokens), "--device", args.device, "--precision", args.precision]
    command += ["--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats)]
    command += ["--vocab", str(args.vocab), "--hidden", str(args.hidden)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "fp32"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--paths", nargs="+", default=["naive", "old", "new"])
    parser.add_argument("--modes", nargs="+", default=["train", "frozen", "nograd"])
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(f"device={args.device} precision={args.precision} V={args.vocab} "
          f"hidden={args.hidden} chunk={args.chunk_size} torch={torch.__version__}")  # fmt: skip
    print("| T | mode | path | extra peak MiB | × fp32 logits | time s | time / old |")
    print("|---|---|---|---|---|---|---|")
    for tokens in args.tokens:
        for mode in args.modes:
            results = {p: run_one(args, p, mode, tokens) for p in args.paths}
            old = results.get("old", {}).get("seconds")
            for path, r in results.items():
                ratio = f"{r['seconds'] / old:.2f}" if old else "-"
                cells = [tokens, mode, path, f"{r['extra_mib']:,.0f}", f"{r['x_logits']:.2f}"]
                print("| " + " | ".join(map(str, [*cells, f"{r['seconds']:.2f}", ratio])) + " |")


if __name__ == "__main__":
    main()
