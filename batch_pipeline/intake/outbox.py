"""data/outbox/: where a person who dropped `name.jsonl` into the inbox finds what became of it, under
the same name: `name.partial.jsonl` while its batch runs (the answer lines so far, written by the run at
each chunk: generation.partial_outbox), `name.output.jsonl` and `name.errors.jsonl` once it finished, or
`name.error.txt` when it failed validation. Copies: the dataset folder stays the record (nothing there is
moved).

A later file of the same name replaces an earlier one's outcome (the copies keep their source's
modification time, so the newest result wins whatever order they are found in)."""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.storage import atomic_path, write_text_atomic
from batch_pipeline.intake.inbox import accepted_datasets
from batch_pipeline.intake.provenance import read_source
from batch_pipeline.intake.validation import ValidationReport, read_validation


@dataclass(frozen=True)
class OutboxNames:
    folder: Path
    name: str

    @property
    def output(self) -> Path:
        return self.folder / f"{self.name}.output.jsonl"

    @property
    def errors(self) -> Path:
        return self.folder / f"{self.name}.errors.jsonl"

    @property
    def partial(self) -> Path:
        return self.folder / f"{self.name}.partial.jsonl"

    @property
    def failure(self) -> Path:
        return self.folder / f"{self.name}.error.txt"


def outbox_names(layout: DataLayout, dataset: str) -> OutboxNames | None:
    """Where an inbox dataset's outcome goes; None for the API's datasets (their files are the API's)."""
    source = read_source(layout, dataset)
    if source is not None and source.source != "inbox":
        return None
    file_name = source.file_name if source is not None and source.file_name else dataset
    return OutboxNames(layout.outbox, Path(file_name).name.removesuffix(".jsonl"))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def _copy_if_newer(source: Path, target: Path) -> bool:
    source_mtime = _mtime(source)
    if source_mtime is None or (_mtime(target) or -1.0) >= source_mtime:
        return False
    with atomic_path(target) as temp:
        shutil.copyfile(source, temp)
        os.utime(temp, (source_mtime, source_mtime))
    return True


def _failure_note(layout: DataLayout, dataset: str, report: ValidationReport) -> str:
    return (f"{report.summary()}\n\nNothing was generated. The accepted input is kept as "
            f"{layout.dataset(dataset).input} (its full report: {layout.dataset(dataset).validation}).\n"
            "Fix the lines above and drop the file into the inbox again.\n")


def sync_dataset(layout: DataLayout, dataset: str) -> list[Path]:
    """Brings one dataset's outbox files up to date; returns the files written."""
    names = outbox_names(layout, dataset)
    report = read_validation(layout, dataset) if names is not None else None
    if report is None:
        return []
    if not report.ok:
        validated_at = _mtime(layout.dataset(dataset).validation)
        if (_mtime(names.failure) or -1.0) >= validated_at:
            return []
        write_text_atomic(names.failure, _failure_note(layout, dataset, report))
        os.utime(names.failure, (validated_at, validated_at))
        return [names.failure]
    responses = layout.responses(dataset, report.model)
    written = [target for source, target in ((responses.output, names.output), (responses.errors, names.errors))
               if _copy_if_newer(source, target)]
    if written and (_mtime(names.failure) or float("inf")) < _mtime(names.output):
        names.failure.unlink(missing_ok=True)  # an earlier file of this name failed; this one ran
    if written:  # the run's last refresh of the partial file came before its final files
        names.partial.unlink(missing_ok=True)
    return written


def sync_outbox(layout: DataLayout) -> list[Path]:
    """Every inbox dataset's outbox files, brought up to date; returns the files written."""
    return [path for dataset in accepted_datasets(layout) for path in sync_dataset(layout, dataset)]
