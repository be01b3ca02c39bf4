"""In-loop benchmark evaluation, when `eval.every` says it is due (any source)."""

from __future__ import annotations

from pathlib import Path

from alignlib.config.schema import RunConfig
from alignlib.rollout.base import RolloutEngine
from alignlib.trainer.state import TrainState


def in_loop_eval(
    state: TrainState,
    config: RunConfig,
    out_dir: Path,
    step: int,
    engine: RolloutEngine | None = None,
) -> dict[str, float]:
    """`eval/<benchmark>/<metric>` scores at the steps `eval.every` names, else nothing.
    Results go to RUN/eval/step-N/results.json unless `eval.output_dir` says otherwise; an
    online run passes its rollout engine, which holds the current weights."""
    eval_cfg = config.eval
    if eval_cfg is None or not eval_cfg.every or step <= 0 or step % eval_cfg.every:
        return {}
    if not state.world.is_main:  # rank 0 evaluates (every rank holds the same weights)
        return {}
    from alignlib.eval.runner import evaluate_in_loop

    if eval_cfg.output_dir is None:
        eval_cfg = eval_cfg.model_copy(update={"output_dir": str(out_dir / "eval")})
    return evaluate_in_loop(state.model, state.tokenizer, eval_cfg, step, engine=engine)
