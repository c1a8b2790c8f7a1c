"""Datasets age out with all the service keeps of them: the folder under data/datasets, the `datasets`
partition (and with it every dataset x model cell of the grid), and an inbox dataset's outbox files.

What goes: an API dataset once every batch that used it has finished and its input file is gone
(expired, by default 30 days after the upload as with OpenAI, or deleted); an inbox dataset
`inbox_dataset_days` after its last change (0, the default, keeps it: it may hold comparisons and
curation work); a partition whose folder is gone (a deletion a crash interrupted). Never a dataset a
queued or running run works on, nor a folder touched within `RECENT_SECONDS` (a batch is being
placed in it, api.placement).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterInstance, RunsFilter

from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import PARTITION_RANGE_START_TAG, PARTITION_TAG
from batch_pipeline.core.partitions import DATASETS, cell_of
from batch_pipeline.core.retention import cutoff, modified_before, remove_each, remove_folder
from batch_pipeline.core.runs import ACTIVE_STATUSES
from batch_pipeline.intake.inbox import accepted_datasets
from batch_pipeline.intake.outbox import OutboxNames, outbox_names
from batch_pipeline.intake.provenance import dataset_source

RECENT_SECONDS = 3600


class DatasetInUse(Exception):
    """Taken up again after it was found old enough to go: it stays."""


def datasets_in_use(instance: DagsterInstance) -> set[str] | None:
    """The datasets queued or running runs work on, whatever launched them (a cell's key names its
    dataset); None while a run works on a range of partitions: then any dataset may be in use."""
    used = set()
    for record in instance.get_run_records(RunsFilter(statuses=list(ACTIVE_STATUSES))):
        tags = record.dagster_run.tags
        if PARTITION_RANGE_START_TAG in tags:
            return None
        if partition := tags.get(PARTITION_TAG):
            cell = cell_of(partition)
            used.add(cell[0] if cell else partition)
    return used


def _last_change(folder: Path) -> float:
    return max((path.stat().st_mtime for path in folder.rglob("*")), default=folder.stat().st_mtime)


def _outcome_files(outbox: OutboxNames) -> tuple[Path, ...]:
    return outbox.output, outbox.errors, outbox.partial, outbox.failure


@dataclass
class DatasetSweep:
    instance: DagsterInstance
    layout: DataLayout
    store: ShimStore | None  # None: the API never recorded a batch, so there is no API dataset
    inbox_dataset_days: float
    now: float
    log: logging.Logger | logging.LoggerAdapter

    def run(self) -> list[str]:
        return remove_each(self.candidates(), self.remove, self.log, "dataset")

    def candidates(self) -> list[str]:
        """Old enough to go and used by no queued or running run."""
        on_disk = {path.name for path in self.layout.datasets.iterdir()} if self.layout.datasets.exists() else set()
        registered = set(self.instance.get_dynamic_partitions(DATASETS.name))
        found = self.store.retired_datasets(self.now) & (on_disk | registered) if self.store else set()
        if (before := cutoff(self.inbox_dataset_days, self.now)) is not None:
            found |= {key for key in accepted_datasets(self.layout) if self._idle_inbox_dataset(key, before)}
        if self.layout.datasets.exists():  # never on a data folder that is not there (a mistyped setting)
            found |= registered - on_disk
        in_use = datasets_in_use(self.instance)
        if in_use is None:
            self.log.info("retention: no dataset removed while a run works on a range of partitions")
            return []
        return sorted(found - in_use)

    def _idle_inbox_dataset(self, key: str, before: float) -> bool:
        try:
            return dataset_source(self.layout, key) == "inbox" and _last_change(self.layout.dataset(key).folder) < before
        except Exception as exc:  # an unreadable dataset stays for a person to look at; the others go on
            self.log.warning(f"retention: dataset {key} skipped: {type(exc).__name__}: {exc}")
            return False

    def remove(self, key: str) -> None:
        """The folder first (in one rename), then its outbox files and partition: a crash in between
        leaves a partition with no folder, which the next sweep removes."""
        folder = self.layout.dataset(key).folder
        if folder.exists():
            if self.store is not None and self.store.dataset_in_use(key, self.now):
                raise DatasetInUse("a new batch uses it")
            if not modified_before(folder, self.now - RECENT_SECONDS):
                raise DatasetInUse(f"its folder changed within the last {RECENT_SECONDS} s")
            outbox = outbox_names(self.layout, key)
            remove_folder(self.layout, folder)
            if outbox is not None and (before := cutoff(self.inbox_dataset_days, self.now)) is not None:
                for path in _outcome_files(outbox):
                    if modified_before(path, before):  # a newer file of the same name owns newer ones
                        path.unlink()
        if self.instance.has_dynamic_partition(DATASETS.name, key):
            self.instance.delete_dynamic_partition(DATASETS.name, key)
