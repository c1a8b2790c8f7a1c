"""Reading `batch_responses` materialization metadata, wherever it is read (metrics, speeds, costs)."""

from collections.abc import Mapping
from typing import Any


def metadata_value(metadata: Mapping[str, Any], key: str, default: Any = 0) -> Any:
    """Raw values or Dagster metadata values (which carry theirs in `.value`); absent in older records."""
    entry = metadata.get(key)
    return default if entry is None else getattr(entry, "value", entry)
