"""TRL's trainers' own ``_compute_loss`` as a test oracle: called unbound with a stand-in
``self`` whose model returns a batch's fixed per-token log-probs (one process, no accelerate),
so a loss and its gradient can be compared with ours in float64."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from batches import leaf

from alignlib.estimator import Batch


def trl_compute_loss(
    compute_loss: Callable[..., torch.Tensor],
    b: Batch,
    inputs: dict[str, Any],
    **attributes: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TRL's loss, d loss / d log π) for ``b``'s rows laid out as completions; ``inputs``: the
    trainer's own batch keys beyond the ids and masks, ``attributes``: its settings."""
    logprobs = leaf(b.logprobs.detach())
    accelerator = SimpleNamespace(
        num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x, sync_gradients=True
    )
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (
            logprobs,
            torch.zeros_like(logprobs),
            None,
        ),
        aux_loss_enabled=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        accelerator=accelerator,
        **attributes,
    )
    ids = torch.zeros_like(b.mask, dtype=torch.long)
    ids_and_masks = {
        "prompt_ids": ids[:, :1],
        "prompt_mask": torch.ones_like(ids[:, :1]),
        "completion_ids": ids,
        "completion_mask": b.mask,
    }
    loss = compute_loss(stub, None, ids_and_masks | inputs)
    return loss, torch.autograd.grad(loss, logprobs)[0]
