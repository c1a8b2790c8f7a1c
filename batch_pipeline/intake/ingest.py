"""Validating an accepted input into its requests table: the work the ingest run and the inbox
sensor's quick path share."""

from dataclasses import dataclass

from batch_pipeline.core.layout import DataLayout, file_sha256
from batch_pipeline.core.registry import Registry
from batch_pipeline.core.settings import InputLimits
from batch_pipeline.core.storage import atomic_path, remove_temp_files
from batch_pipeline.intake.provenance import input_change
from batch_pipeline.intake.requests_table import write_requests
from batch_pipeline.intake.validation import BatchFileScan, ValidationReport


class InputChanged(Exception):
    """The input is no longer the file that was accepted: it is not validated."""

    def __init__(self, message: str, content_sha256: str):
        super().__init__(message)
        self.content_sha256 = content_sha256


@dataclass(frozen=True)
class Ingested:
    report: ValidationReport
    rows: int
    content_sha256: str


class _Invalid(Exception):
    pass


def ingest(layout: DataLayout, dataset: str, registry: Registry, limits: InputLimits) -> Ingested:
    """Writes `requests.parquet` (atomically) only when every line is valid. The report is the
    caller's to write: its presence tells the inbox sensor the dataset needs no more ingesting."""
    paths = layout.dataset(dataset)
    content_sha256 = file_sha256(paths.input)
    if change := input_change(layout, dataset, content_sha256):
        raise InputChanged(change, content_sha256)
    remove_temp_files(paths.folder)
    scan = BatchFileScan(paths.input, set(registry.names()), limits, registry.embedding_models())
    try:
        with atomic_path(paths.requests) as temp:
            rows = write_requests(scan.rows(), temp)
            report = scan.report()
            if not report.ok:
                raise _Invalid
    except _Invalid:
        rows = 0
    return Ingested(report, rows, content_sha256)
