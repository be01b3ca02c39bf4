"""Held-out rows of an offline run (`data.heldout`): scored without gradient by the run's own
estimator, so preference methods report held-out accuracy and margins (TRL's eval_dataset)."""

from __future__ import annotations

from pydantic import Field, model_validator

from alignlib.config.section import Section


class DataHeldoutConfig(Section):
    path: str | None = None
    """Held-out rows in the training format (a file, `builtin:NAME` or a hub data set); null:
    the last `size` rows of data.path, which then do not train."""
    split: str = "test"
    """Split to read from a hub data set given as `path`."""
    size: int | None = Field(64, gt=0)
    """Rows to score: the first `size` of `path`, or the last `size` of data.path; null: all of
    `path`."""
    every: int | None = Field(10, gt=0)
    """Score them every N steps (and before training and at the end); null: only before and
    after. Logged as `heldout/<metric>`: the loss and every metric the estimator reports
    (`heldout/dpo/accuracy`, `heldout/reward_model/margin`, ...), averaged over the held-out
    mini-batches of train.batch_size rows."""

    @model_validator(mode="after")
    def _some_rows(self) -> DataHeldoutConfig:
        if self.path is None and self.size is None:
            raise ValueError(
                "data.heldout: give size (the last rows of data.path are held out) or path"
            )
        return self
