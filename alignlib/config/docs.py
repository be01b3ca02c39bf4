"""Render the config reference from the schema's field docstrings (one source of truth)."""

from __future__ import annotations

from typing import get_origin

from pydantic import BaseModel

from alignlib.config.schema import RunConfig


def _section_type(annotation: object) -> type[BaseModel] | None:
    """The section a field holds (itself, or optional); a mapping of sections is one key."""
    if get_origin(annotation) is dict:
        return None
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def render_markdown(model: type[BaseModel] = RunConfig, prefix: str = "") -> str:
    """A markdown table per section: key, default, meaning."""
    rows, sections = [], []
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        key = f"{prefix}{name}"
        if section is not None:
            sections.append(render_markdown(section, prefix=f"{key}."))
            continue
        doc = " ".join((field.description or "").split())
        default = "required" if field.is_required() else repr(field.default)
        rows.append(f"| `{key}` | `{default}` | {doc} |")
    title = prefix.rstrip(".") or "top level"
    header = f"\n### {title}\n\n| key | default | meaning |\n|---|---|---|\n"
    table = header + "\n".join(rows) + "\n"
    return (table if rows else "") + "".join(sections)
