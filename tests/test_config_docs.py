"""Every config field is documented, and docs/config.md is the schema's own rendering."""

from __future__ import annotations

from pathlib import Path

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
