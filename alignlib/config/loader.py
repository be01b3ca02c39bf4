"""YAML → RunConfig with dotted CLI overrides, and one-line errors that name the key."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from alignlib.config.schema import RunConfig
from alignlib.suggest import did_you_mean


class ConfigError(ValueError):
    """A config the user must fix; the message is one line naming the file and key."""


def _section_fields(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    """Field names valid at ``path`` inside ``model`` (for did-you-mean suggestions)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):  # an entry of a list: the list's key found its item model
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(current.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section model an annotation holds: itself, or inside `X | None`, `list[X]`, ..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p[:1].isupper()))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        valid = _section_fields(RunConfig, loc[:-1])
        hint = did_you_mean(loc[-1], valid)
        return f"{key}: unknown key{hint}; valid keys here: {', '.join(valid)}"
    if error["type"] == "missing" and loc and isinstance(loc[-1], int):  # a list too short
        parent = ".".join(str(p) for p in loc[:-1])
        return f"{parent}: too few values, got {error.get('input')!r}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"].endswith("_type") and isinstance(error.get("input"), dict):
        return f"{key} has no sub-keys: set it to a value ({key}: VALUE, or {key}=VALUE)"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    shown = error.get("input")
    got = f" (got {shown!r})" if not isinstance(shown, dict) and "input" in error else ""
    if message.startswith(f"{key}."):  # a section's own check already names its keys
        return f"{message}{got}"
    return f"{key}: {message}{got}"


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-6", "lora.enabled=true"]`` → nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-6")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        target = nested
        parts = key.strip().split(".")
        indexed = next((p for p in parts if re.fullmatch(r"\w+\[\d+\]", p)), None)
        if indexed is not None:
            whole = ".".join([*parts[: parts.index(indexed)], indexed.split("[")[0]])
            raise ConfigError(
                f"override {item!r}: one item of a list cannot be set alone; give the whole "
                f"list, e.g. {whole}='[{{name: math, weight: 2}}]'"
            )
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        target[parts[-1]] = value
    return nested


def merge_sections(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested dicts merged key by key (new dicts; leaves shared).
    An empty mapping in ``extra`` replaces the whole mapping (``algorithm.params={}`` clears a
    file's params)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """Read, merge overrides, validate; relative data paths resolve against the file's folder."""
    raw: dict[str, Any] = {}
    where = "overrides"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(
                f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})"
            ) from None
        if raw is None:  # a run of nothing but defaults is more likely the wrong file
            raise ConfigError(
                f"{path} is empty; a config names at least its model, data and algorithm "
                "(see configs/*.yaml)"
            )
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    given = parse_overrides(list(overrides))
    config = validate_sections(merge_sections(raw, given), where, given)
    if path is not None:
        config = _resolve_paths(config, Path(path).parent, where)
        check_reward_modules(config, Path(path).parent, where)
    renamed = "name" in given.get("algorithm", {}) and "params" not in given.get("algorithm", {})
    check_names(config, where, renamed)
    return config


def validate_sections(
    raw: dict[str, Any], where: str, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """``raw`` sections → RunConfig; the first error is one ConfigError line naming its key and
    where the bad value came from (``where``, or the command-line override that set it)."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        source = _override_source(errors[0]["loc"], overrides or {}) or where
        raise ConfigError(f"{source}: {_describe(errors[0])}{more}") from None


def _override_source(loc: tuple[str | int, ...], given: dict[str, Any]) -> str | None:
    """'command-line override' when the invalid value at ``loc`` came from an override, so the
    error does not blame the file (which may not even hold that key); None otherwise."""
    node: Any = given
    for part in loc:
        if not isinstance(node, dict):  # the override set this whole value (e.g. a list)
            break
        if part not in node:
            return None
        node = node[part]
    return "command-line override"


def _resolve_paths(config: RunConfig, base: Path, where: str) -> RunConfig:
    """Relative local data files (data.path, online.heldout.data) resolve against the config
    file's folder; a missing one is refused here, naming its key."""
    data = config.data.model_copy(update={"path": _local_file(config.data.path, base, where)})
    heldout = config.online.heldout
    if heldout.data is not None:
        path = _local_file(heldout.data, base, where, "online.heldout.data")
        heldout = heldout.model_copy(update={"data": path})
    online = config.online.model_copy(update={"heldout": heldout})
    return config.model_copy(update={"data": data, "online": online})


def _local_file(path: str, base: Path, where: str, key: str = "data.path") -> str:
    """``path`` against ``base`` when that file exists (or ``path`` itself does not)."""
    if Path(path).suffix not in {".jsonl", ".json", ".parquet"}:
        return path  # builtin:NAME or a hub data set
    if not Path(path).is_absolute():
        candidate = base / path
        if candidate.exists() or not Path(path).exists():
            path = str(candidate)
    if not Path(path).exists():
        raise ConfigError(f"{where}: {key}: file {path} does not exist")
    return path


def check_output_dir(out_dir: Path, name: str = "output_dir:") -> None:
    """The run folder (or a folder above it) must not be an existing file; ``name`` is how the
    caller's user set it (`output_dir:` in a config, `--output-dir` on eval's command line)."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists() and not folder.is_dir():
            where = "is" if folder == out_dir else f"is inside {folder}, which is"
            raise ConfigError(f"{name} {out_dir} {where} a file; give a folder path")


def check_reward_modules(config: RunConfig, base: Path, where: str) -> None:
    """A ``module:function`` reward whose module cannot be imported but sits beside the config
    file: say so, with the PYTHONPATH that makes it importable (the folder is never added to
    sys.path behind the user's back: the same config must work wherever it is run from)."""
    specs = [(f"online.rewards[{i}].name", r.name) for i, r in enumerate(config.online.rewards)]
    specs = specs if config.rollout is not None else []
    if config.iterative is not None:
        specs.append(("iterative.oracle", config.iterative.oracle))
    for key, spec in specs:
        found = _module_beside(spec, base)
        if found is not None:
            module = spec.partition(":")[0]
            raise ConfigError(
                f"{where}: {key}: module {module!r} is not importable here, but {found} is next "
                f"to the config; put the config's folder on the import path: PYTHONPATH="
                f"{base.resolve()} alignlib train ... (or install the module)"
            )


def _module_beside(spec: str, base: Path) -> Path | None:
    """The file in ``base`` that would provide ``spec``'s module, when that module cannot be
    imported as things stand (None otherwise, or when ``spec`` is not ``module:function``)."""
    module, colon, _ = spec.partition(":")
    if not colon or not module or module == "reward_model":
        return None
    parts = module.split(".")
    try:
        if importlib.util.find_spec(parts[0]) is not None:  # a top-level name: nothing runs
            return None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules with no __spec__
        return None
    candidates = (base / f"{parts[0]}.py", base / parts[0] / "__init__.py")
    candidates += (base.joinpath(*parts).with_suffix(".py"),)
    return next((p.resolve() for p in candidates if p.is_file()), None)


def check_names(config: RunConfig, where: str, renamed: bool = False) -> None:
    """Preset and component names (and preset parameters) must exist: say which key is wrong.
    ``renamed``: the command line changed algorithm.name, so the params came from the file."""
    import alignlib.algorithms as algorithms
    from alignlib.estimator import registry as component_registry

    def fail(key: str, exc: Exception) -> None:
        raise ConfigError(f"{where}: {key}: {exc}") from None

    algo = config.algorithm
    if algo.name is not None:
        hint = " (the command line changed algorithm.name: algorithm.params={} drops them)"
        check_preset_params(algo.name, algo.params, "algorithm", where, hint if renamed else "")
        check_preset_values(config, where)
    for i, entry in enumerate(algo.mix or []):
        key = f"algorithm.mix[{i}]"
        check_preset_params(entry.name, entry.params, key, where)
        try:
            algorithms.get(entry.name, **entry.params)
        except component_registry.ParameterError as exc:
            raise ConfigError(f"{where}: {key}.params.{exc.param}: {exc.detail}") from None
        except (component_registry.RegistryError, TypeError, ValueError) as exc:
            fail(f"{key}.params", exc)
    if algo.name is None:
        from alignlib.config.estimator import build_estimator
        from alignlib.estimator.pair_options import AlgorithmOptionError

        try:
            build_estimator(config.algorithm)
        except AlgorithmOptionError as exc:  # names its own key
            raise ConfigError(f"{where}: {exc}") from None
        except (component_registry.RegistryError, TypeError, ValueError) as exc:
            fail("algorithm.components" if algo.mix is None else "algorithm.mix", exc)


def check_preset_params(
    name: str, params: dict[str, Any], key: str, where: str, hint: str = ""
) -> None:
    """``key``.name must be a preset and each of ``key``.params one of its parameters."""
    import alignlib.algorithms as algorithms
    from alignlib.estimator.registry import RegistryError

    try:
        valid = algorithms.parameters(name)
    except RegistryError as exc:
        raise ConfigError(f"{where}: {key}.name: {exc}") from None
    for param in params:
        if param not in valid:
            raise ConfigError(
                f"{where}: {key}.params.{param}: not a parameter of {name}"
                f"{did_you_mean(param, valid)}; valid: {', '.join(valid)}{hint}"
            )


def check_preset_values(config: RunConfig, where: str) -> None:
    """Build the preset, so a value its components refuse (β ≤ 0, `beta: high`) is one line
    naming algorithm.params.KEY before anything loads."""
    from alignlib.config.estimator import build_estimator
    from alignlib.estimator.pair_options import AlgorithmOptionError
    from alignlib.estimator.registry import ParameterError, RegistryError

    params = config.algorithm.params
    try:
        build_estimator(config.algorithm)
    except AlgorithmOptionError as exc:  # names its own key
        raise ConfigError(f"{where}: {exc}") from None
    except ParameterError as exc:
        if exc.param in params:
            raise ConfigError(f"{where}: algorithm.params.{exc.param}: {exc.detail}") from None
        raise ConfigError(f"{where}: algorithm.params: {exc}") from None
    except (RegistryError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: algorithm.params: {exc}") from None
