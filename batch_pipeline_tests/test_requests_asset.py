import json

import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, Failure, materialize

from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline_tests.conftest import request_line, write_batch, write_jsonl

KEY = "batch-0123456789"


@pytest.fixture
def instance():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DATASETS.name, [KEY])
    return instance


def test_valid_file_becomes_requests_parquet(instance, pipeline):
    write_batch(pipeline.layout.dataset(KEY).input, 120)
    result = materialize([batch_requests], partition_key=KEY, instance=instance, resources={"pipeline": pipeline})
    metadata = result.asset_materializations_for_node("batch_requests")[0].metadata
    assert metadata["rows"].value == 120 and metadata["model"].value == "SmolLM2-135M-Instruct"
    table = pq.read_table(pipeline.layout.dataset(KEY).requests)
    assert table.num_rows == 120 and table.column("custom_id")[0].as_py() == "req-00000"


def test_invalid_file_fails_with_line_numbered_errors_and_writes_no_requests(instance, pipeline):
    paths = pipeline.layout.dataset(KEY)
    write_jsonl(paths.input, [request_line("a"), "{oops", request_line("a"), request_line("b", model="nope")])
    with pytest.raises(Failure) as caught:
        materialize([batch_requests], partition_key=KEY, instance=instance, resources={"pipeline": pipeline})
    assert "line 2: [invalid_json_line]" in caught.value.description
    assert "line 3: [duplicate_custom_id]" in caught.value.description
    assert "line 4: [mismatched_model]" in caught.value.description
    assert not paths.requests.exists()
    assert not list(paths.folder.glob("*.tmp-*"))
    report = json.loads(paths.validation.read_text())
    assert [e["line"] for e in report["errors"]] == [2, 3, 4]
