"""Peak host memory of a GRPO run, alignlib vs TRL 1.16, on a CPU: the memory half of
grpo_vs_trl.py where no GPU is at hand (its settings, matched the same way).

Each side runs alone in a fresh process (`--side`), so neither sees the other's leftovers;
peak = VmHWM (reset through /proc/self/clear_refs after the imports) − RSS at that point.
Run with MALLOC_MMAP_THRESHOLD_=65536 so freed tensors go back to the system at once and the
peak is that of live tensors, not of glibc's heap:

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=2 python benchmarks/grpo_memory.py \
        --model /tmp/qwen05b-6 --precision bf16-mixed [--gradient-checkpointing]

(`benchmarks/gpu/make_stand_in.py --layers 6` makes that model: 0.13 B parameters.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


def one_side(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import grpo_vs_trl as bench
    import trl  # noqa: F401  (imported before the baseline, as alignlib's trainer below)
    from logprob_memory import current_bytes, peak_bytes

    import alignlib.trainer.loop  # noqa: F401

    bench.PROMPTS, bench.N, bench.MICRO, bench.MAX_NEW = args.prompts, args.n, args.micro, 64
    bench.PRECISION, bench.CHECKPOINTING = args.precision, args.gradient_checkpointing
    Path("/proc/self/clear_refs").write_text("5")
    base = current_bytes("cpu") / 2**20
    run = bench.alignlib_steps if args.side == "alignlib" else bench.trl_steps
    with tempfile.TemporaryDirectory() as tmp:
        run(args.model, args.steps, Path(tmp))
    print(f"{args.side}: peak {peak_bytes('cpu') / 2**20 - base:.0f} MiB above {base:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"])
    parser.add_argument("--gradient-checkpointing", action="store_true", help="both sides")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--side", choices=["alignlib", "trl"], help="(internal) one side only")
    args = parser.parse_args()
    if args.side:
        one_side(args)
        return
    for side in ("alignlib", "trl"):
        command = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
