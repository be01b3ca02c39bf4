"""`alignlib train | eval | config | plot | push`: user errors print one line, never a
traceback (`alignlib --traceback ...` adds it after the line)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

import yaml

# User errors are ValueErrors (ConfigError, DataError, RewardError, ParameterError — which is
# also a TypeError for `beta: high` —, pydantic's ValidationError) or OSErrors (a missing file,
# TimeoutError / ConnectionError from an unreachable Ray cluster). A bug stays a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, OSError, KeyError)


def _train(args: argparse.Namespace) -> int:
    from alignlib.config import load_config
    from alignlib.trainer.loop import Trainer

    config = load_config(args.config, args.overrides)
    trainer = Trainer(config)
    where = trainer.placement
    print(f"training on {where.device} ({where.precision})")
    result = trainer.train()
    shown = {k: v for k, v in result.final_metrics.items() if isinstance(v, float)}
    print(f"done: {result.steps} steps, outputs in {result.output_dir}")
    # 4 significant digits, not 4 decimals: a learning rate of 5e-7 must not print as 0.0
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())))
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from alignlib.config import load_config

    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _config_docs(args: argparse.Namespace) -> int:
    from alignlib.config.docs import render_markdown

    print(render_markdown(), end="")
    return 0


def _config_methods(args: argparse.Namespace) -> int:
    import shutil

    from alignlib import algorithms
    from alignlib.trainer.online_update import online_presets

    if args.name is not None:  # an unknown name is one line listing the valid ones
        described = algorithms.describe(args.name)
        print(f"{described}\n\ndata: {_rows_needed(args.name)}\n\n{algorithms.source(args.name)}")
        return 0
    online = set(online_presets())
    width = shutil.get_terminal_size((100, 24)).columns
    for name in algorithms.available():
        first = " ".join(algorithms.source(name).split("\n\n")[0].split())
        line = f"{name:<18} {'online' if name in online else 'offline':<8} {first}"
        print(line if len(line) <= width else line[: width - 1] + "…")
    return 0


def _rows_needed(name: str) -> str:
    """What a run of preset ``name`` trains on, in a line: the rows and, online, what else."""
    from alignlib import algorithms
    from alignlib.algorithms import router_for
    from alignlib.config.online import OnlineConfig
    from alignlib.data.fit import described, wanted_formats
    from alignlib.trainer.online_update import online_presets

    estimator = algorithms.get(name)
    if name not in online_presets():
        formats = " or ".join(described(f, {}) for f in wanted_formats(estimator.terms))
        return f"offline, {formats} (data.path; data.prompt_field renames prompt)"
    solution = router_for(estimator, OnlineConfig()).needs_demonstrations
    return (
        f"online, rows {{prompt, answer{', solution' if solution else ''}}} (data.path; "
        "data.prompt_field / data.answer_field rename prompt / answer); rollout: samples "
        "rollout.n completions per prompt, "
        "online.rewards score them"
    )


def _plot(args: argparse.Namespace) -> int:
    from alignlib.trainer.logs import plot

    target, note = plot(args.run_dir, args.output)
    if note:
        print(note, file=sys.stderr)
    print(target)
    return 0


def _push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alignlib.trainer.model_card import push

    lines = push(
        Path(args.run_dir),
        args.repo_id,
        folder=args.folder,
        private=args.private,
        dry_run=args.dry_run,
    )
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlib", description=__doc__)
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, print the whole traceback after its one line (or ALIGNLIB_TRACEBACK=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train from a YAML config",
        epilog=(
            "Overrides take YAML values: online.rewards='[{name: math}]', "
            "'algorithm.params={}' (an empty mapping replaces the file's), lists are replaced "
            "whole. Every key with its default and meaning: alignlib config docs. The methods: "
            "alignlib config methods [NAME]. The resolved config: alignlib config show CONFIG."
        ),
    )
    train.add_argument("config", help="the run's YAML file")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-6")
    train.set_defaults(run=_train)

    config = commands.add_parser("config", help="inspect configs")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved config")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*")
    show.set_defaults(run=_config_show)
    docs = config_commands.add_parser("docs", help="print the reference of every config key")
    docs.set_defaults(run=_config_docs)
    methods = config_commands.add_parser(
        "methods", help="list the algorithm presets, or show one's parameters and paper"
    )
    methods.add_argument("name", nargs="?", help="a preset, e.g. grpo")
    methods.set_defaults(run=_config_methods)

    plot = commands.add_parser("plot", help="PNG of a run's training curves")
    plot.add_argument("run_dir")
    plot.add_argument("--output", default=None, help="PNG (default RUN_DIR/training_curves.png)")
    plot.set_defaults(run=_plot)

    push = commands.add_parser("push", help="upload a run's model and model card to the Hub")
    push.add_argument("run_dir", help="the run's output_dir")
    push.add_argument("repo_id", help="Hub repository, e.g. me/smollm2-dpo (created if absent)")
    push.add_argument("--folder", default="final", choices=["final", "merged"])
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--dry-run", action="store_true", help="list the files; upload nothing")
    push.set_defaults(run=_push)

    try:
        from alignlib.eval.cli import add_eval_parser
    except ImportError:
        pass
    else:
        add_eval_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except BrokenPipeError:  # the reader closed the pipe (`| head`): nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"alignlib: error: {message}", file=sys.stderr)
        if args.traceback or os.environ.get("ALIGNLIB_TRACEBACK", "") not in ("", "0"):
            traceback.print_exc()
        return 2
    except KeyboardInterrupt:
        print("alignlib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
