"""Every config field is documented, docs/config.md is the schema's own rendering, and `alignlib
config methods` lists the presets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from alignlib.config.docs import _section_type, render_markdown
from alignlib.config.schema import RunConfig


def fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    out = []
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        if section is not None:
            out.extend(fields(section, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", field.description))
    return out


def test_every_field_has_a_docstring() -> None:
    undocumented = [key for key, doc in fields(RunConfig) if not (doc and doc.strip())]
    assert not undocumented, f"fields without a docstring: {undocumented}"


def test_docs_file_is_generated_from_the_schema() -> None:
    committed = Path(__file__).parents[1] / "docs" / "config.md"
    header, _, body = committed.read_text().partition("<!-- generated -->\n")
    assert body == render_markdown(), (
        "docs/config.md is stale: regenerate it with `alignlib config docs`"
    )
    assert header.startswith("# Configuration reference")


def test_config_methods_lists_every_preset_with_its_kind_and_paper(capsys) -> None:
    from alignlib import algorithms
    from alignlib.cli import main

    assert main(["config", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = {line.split()[0]: line.split()[1] for line in lines}
    assert sorted(kinds) == sorted(algorithms.available())
    assert kinds["grpo"] == kinds["remax"] == kinds["topr"] == "online"
    assert kinds["dpo"] == kinds["sft"] == kinds["kto"] == "offline"
    assert main(["config", "methods", "topr"]) == 0
    shown = capsys.readouterr().out
    assert "topr(baseline=0.0, level='sequence'" in shown and "arXiv 2503.14286" in shown
    assert main(["config", "methods", "tpor"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "did you mean 'tpo'" in error


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("dpo", "offline, preference rows {prompt, chosen, rejected}"),
        ("sft", "offline, sft rows {prompt, completion}"),
        ("kto", "offline, kto rows {prompt, completion, label}"),
        ("apo_zero_unpaired", "offline, preference rows {prompt, chosen, rejected} or kto rows"),
        ("tpo", "offline, tpo rows {prompt, reference, chosen, rejected}"),
        ("bvpo", "offline, bvpo rows {prompt, chosen, rejected, trace}"),
        ("grpo", "online, rows {prompt, answer}"),
        ("hpt", "online, rows {prompt, answer, solution}"),
    ],
)
def test_config_methods_names_the_rows_a_method_trains_on(capsys, name: str, rows: str) -> None:
    """The format the data check would ask for (data/fit.py), so a new user knows the columns."""
    from alignlib.cli import main

    assert main(["config", "methods", name]) == 0
    data = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data: ")]
    assert len(data) == 1 and data[0].startswith(f"data: {rows}"), data
