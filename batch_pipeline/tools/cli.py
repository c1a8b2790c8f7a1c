"""What the hand-run tools share: one-line errors instead of tracebacks, and the Dagster instance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.settings import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance


class ToolError(Exception):
    """A mistake the user can fix from the message alone."""


def open_instance(settings: Settings) -> DagsterInstance:
    from dagster import DagsterInstance  # a second or two to import: only for the tools that need it

    home = settings.dagster_home
    if not (home / "dagster.yaml").exists():
        raise ToolError(f"no Dagster instance at {home}: run `make run` (or `make instance`) first, "
                        "or set DAGSTER_HOME")
    return DagsterInstance.from_config(str(home))


def require_validated_dataset(layout: DataLayout, dataset: str) -> None:
    from batch_pipeline.intake.inbox import accepted_datasets

    if layout.dataset(dataset).requests.exists():
        return
    if layout.dataset(dataset).input.exists():
        raise ToolError(f"dataset {dataset!r} has not passed validation (see {layout.dataset(dataset).validation})")
    known = accepted_datasets(layout)
    listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    raise ToolError(f"dataset {dataset!r} not found in {layout.datasets}; datasets: {listed or 'none yet'}")
