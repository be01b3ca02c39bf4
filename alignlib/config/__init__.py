"""Typed run configuration: YAML files, dotted overrides, one-line errors."""

from alignlib.config.loader import ConfigError, load_config, merge_sections, parse_overrides
from alignlib.config.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "load_config", "merge_sections", "parse_overrides"]
