"""ORPO's `prompt_loss` end to end on the offline path: the prompt's tokens (all but the first)
are marked, their log-probs computed by the training kernel like the completion's, and the NLL
counts them (the estimator's side is in test_gradient_identity / test_trl_parity_*)."""

from __future__ import annotations

from pathlib import Path

import torch
from test_trainer import PAIRS, config_file, write_jsonl

from alignlib.config import load_config
from alignlib.trainer.loop import Trainer


def first_batch(tmp_path: Path, prompt_loss: bool):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    path = config_file(tmp_path, data, "orpo")
    trainer = Trainer(load_config(path, [f"algorithm.params.prompt_loss={prompt_loss}"]))
    source = trainer.source()
    state = trainer.state(source)
    source.prepare(state)
    return trainer, source, next(iter(source.batches(1)))


def test_prompt_tokens_are_marked_and_scored_by_the_kernel(tmp_path: Path) -> None:
    trainer, source, batch = first_batch(tmp_path, prompt_loss=True)
    rows, fields = batch.rows, batch.fields
    assert fields.prompt_mask is not None
    # Every real token after the first is the prompt's or the completion's, never both.
    scored = rows.attention.clone()
    scored[:, 0] = 0
    assert torch.equal(fields.prompt_mask + fields.mask, scored.to(fields.mask.dtype))
    assert bool((fields.prompt_mask.sum(-1) >= 2).all())  # chat-templated prompts are long
    got, _ = source.kernel.all_rows(rows, rows.num_rows)
    with torch.no_grad():
        logits = trainer.model(input_ids=rows.input_ids, attention_mask=rows.attention).logits
    want = logits[:, :-1].log_softmax(-1).gather(-1, rows.input_ids[:, 1:, None])[..., 0]
    on_prompt = fields.prompt_mask[:, 1:].bool()
    torch.testing.assert_close(got[:, 1:][on_prompt], want[on_prompt], rtol=1e-4, atol=1e-4)
    assert bool((got[:, 1:][on_prompt] < 0).all())


def test_without_prompt_loss_the_prompt_is_neither_marked_nor_scored(tmp_path: Path) -> None:
    _, source, batch = first_batch(tmp_path, prompt_loss=False)
    assert batch.fields.prompt_mask is None
    assert torch.equal(batch.rows.scored, batch.fields.mask)
    got, _ = source.kernel.all_rows(batch.rows, batch.rows.num_rows)
    first = int(batch.fields.mask.ne(0).any(0).nonzero()[0])
    assert bool((got[:, :first] == 0).all())  # the LM head never ran on the prompt columns
