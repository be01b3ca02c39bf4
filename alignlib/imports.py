"""``"package.module:attribute"`` strings from configs, imported with one-line errors.

Shared by every place a config names user code (reward functions, environments): a missing
module, a module that raises while importing, or a missing attribute each become a ValueError
naming the spec and what to do, never a bare traceback.
"""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path

__all__ = ["import_attr"]


def import_attr(spec: str, label: str = "spec", attribute: str = "function") -> object:
    """The object ``spec`` (``"package.module:name"``, dots after ':' walk attributes) names.

    ``label`` starts every error (e.g. ``"reward spec"``); ``attribute`` says what the part
    after ':' should be (``"function"``, ``"class"``)."""
    module_name, _, attr_path = spec.partition(":")
    head = f"{label} {spec!r}"
    if not module_name or not attr_path:
        raise ValueError(f"{head} must look like 'package.module:{attribute}'")
    obj: object = _import_module(module_name, head)
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"{head}: {_describe(obj)} has no attribute {part!r}; check the {attribute} "
                "name after ':'"
            )
        obj = getattr(obj, part)
    return obj


def _import_module(module_name: str, head: str) -> object:
    try:
        return importlib.import_module(module_name)
    except SyntaxError as e:
        where = f"{e.filename} line {e.lineno}" if e.filename else f"module {module_name!r}"
        raise ValueError(f"{head}: {where}: SyntaxError: {e.msg}") from None
    except ImportError as e:
        raise ValueError(_import_error(e, module_name, head)) from None
    except Exception as e:  # the module's own code raised while being imported
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != __file__]
        frames = [f for f in frames if "importlib" not in f.filename] or frames
        where = f" ({frames[-1].filename} line {frames[-1].lineno})" if frames else ""
        raise ValueError(
            f"{head}: importing module {module_name!r} raised {type(e).__name__}: {e}{where}"
        ) from None


def _import_error(e: ImportError, module_name: str, head: str) -> str:
    top = module_name.split(".")[0]
    missing = isinstance(e, ModuleNotFoundError) and e.name
    if missing and e.name == top and Path(f"{top}.py").is_file():
        return (
            f"{head}: No module named {top!r}, though {top}.py is in the current folder: put its "
            "folder on PYTHONPATH (e.g. PYTHONPATH=. alignlib train ...)"
        )
    if missing and not f"{module_name}.".startswith(f"{e.name}."):
        return (
            f"{head}: module {module_name!r} imports {e.name!r}, which is not installed; install "
            "it in this environment"
        )
    return (
        f"{head}: cannot import module {module_name!r} ({e}); check the module path and that its "
        "package is installed (a module of your own: put its folder on PYTHONPATH)"
    )


def _describe(obj: object) -> str:
    name = getattr(obj, "__name__", None)
    return f"module {name!r}" if hasattr(obj, "__file__") else repr(name or obj)
