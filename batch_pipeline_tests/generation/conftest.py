"""Fixtures of the generation tests."""

import pytest

from batch_pipeline.core.settings import InputLimits
from batch_pipeline.intake.requests_table import write_requests
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline_tests.support.batches import write_batch
from batch_pipeline_tests.support.models import MODEL


@pytest.fixture
def requests_path(tmp_path):
    source = write_batch(tmp_path / "batch.jsonl", 250)
    scan = BatchFileScan(source, {MODEL}, InputLimits())
    path = tmp_path / "requests.parquet"
    write_requests(scan.rows(), path)
    return path
