"""Where a run computes and in which precision: the one place both are decided.

``model.device`` (`auto | cpu | cuda | cuda:N`) and ``model.precision`` (`auto | fp32 |
bf16-mixed | bf16`) resolve here into a :class:`Placement`. Everything that holds weights —
the policy, frozen reference / previous-iterate copies, reward models, the transformers rollout
engine, evaluation models — is put on ``placement.device``; the training kernel runs the model
under ``placement.autocast()``.

Precision modes (the names follow PyTorch Lightning's ``precision`` flag):
- ``fp32``: parameters, optimizer state and compute in float32.
- ``bf16-mixed``: float32 master weights and AdamW state, bfloat16 compute through
  ``torch.autocast`` (matmuls and attention in bf16, reductions and norms in fp32), as FSDP2's
  ``MixedPrecisionPolicy(param_dtype=bf16)`` does. The log-softmax and the loss run in fp32.
  Frozen copies (the reference policy) are stored in bf16: they never take an update.
- ``bf16``: parameters *and* AdamW state in bfloat16. Half the memory of ``bf16-mixed`` for
  weights and optimizer, but small updates round away (bf16 keeps 8 bits of mantissa): an
  explicit choice for models that do not fit otherwise, never a default.
- ``auto``: ``bf16-mixed`` on a CUDA device that supports bf16, ``fp32`` elsewhere (on a CPU
  autocast to bf16 is slower than fp32).
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16-mixed", "bf16"]
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
HOST = torch.device("cpu")
"""Where data is collated before it moves, once, to the run's device."""


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → ``cuda`` when available (the current CUDA device), else ``cpu``.

    An explicit ``cuda`` / ``cuda:N`` on a machine without it is one clear error, not a silent
    fallback to the CPU (a 7B run on a CPU would look like a hang).
    """
    if not DEVICE_PATTERN.match(spec):
        raise ValueError(f"model.device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else HOST
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"model.device {spec!r}: this torch build sees no CUDA device "
                f"(torch {torch.__version__}); use model.device=cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"model.device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return device


@dataclass(frozen=True)
class Placement:
    """The resolved device and precision of a run."""

    device: torch.device
    precision: Literal["fp32", "bf16-mixed", "bf16"]

    @classmethod
    def resolve(cls, device: str = "auto", precision: Precision = "auto") -> Placement:
        where = resolve_device(device)
        if precision == "auto":
            bf16_ok = where.type == "cuda" and torch.cuda.is_bf16_supported()
            precision = "bf16-mixed" if bf16_ok else "fp32"
        return cls(where, precision)

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of trainable parameters and therefore of the optimizer state."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype the model's matmuls run in."""
        return torch.float32 if self.precision == "fp32" else torch.bfloat16

    @property
    def frozen_dtype(self) -> torch.dtype:
        """dtype of frozen copies (reference, previous iterate): the compute dtype, since they
        take no update and autocast would cast their weights to it on every matmul anyway."""
        return self.compute_dtype

    @property
    def engine_dtype(self) -> str:
        """dtype name for engines that load their own copy (vLLM, Ray workers)."""
        return "float32" if self.compute_dtype == torch.float32 else "bfloat16"

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast under ``bf16-mixed``; nothing otherwise (fp32, or bf16 weights)."""
        if self.precision != "bf16-mixed":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


CPU_FP32 = Placement(HOST, "fp32")
