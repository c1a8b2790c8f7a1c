import json

import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, Failure, materialize

from batch_pipeline.core.layout import file_sha256, key_hash
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline.intake.inbox import sweep_inbox
from batch_pipeline.intake.provenance import DatasetSource, read_source
from batch_pipeline_tests.support.batches import request_line, write_batch, write_jsonl

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


def _accepted(pipeline, name: str, count: int = 3) -> str:
    write_batch(pipeline.layout.inbox / name, count)
    [outcome] = sweep_inbox(pipeline.layout, max_bytes=10**6, settle_seconds=0)
    return outcome.dataset


def _ingest(instance, pipeline, key: str):
    instance.add_dynamic_partitions(DATASETS.name, [key])
    return materialize([batch_requests], partition_key=key, instance=instance, resources={"pipeline": pipeline})


def test_an_input_changed_after_acceptance_fails_naming_both_hashes_and_what_to_do(instance, pipeline):
    key = _accepted(pipeline, "late writer.jsonl")
    paths = pipeline.layout.dataset(key)
    expected = file_sha256(paths.input)
    with paths.input.open("a") as late_writer:
        late_writer.write(json.dumps(request_line("appended")) + "\n")
    with pytest.raises(Failure) as caught:
        _ingest(instance, pipeline, key)
    message = caught.value.description
    assert str(paths.input) in message and "changed after it was accepted" in message
    assert expected in message and file_sha256(paths.input) in message
    assert "drop the file into the inbox again under a new name" in message
    assert not paths.validation.exists() and not paths.requests.exists()


def test_an_inbox_input_is_checked_against_its_key_where_no_hash_was_recorded(instance, pipeline):
    key = _accepted(pipeline, "older.jsonl")
    paths = pipeline.layout.dataset(key)
    record = read_source(pipeline.layout, key)
    paths.source.write_text(record.model_copy(update={"sha256": None}).model_dump_json(exclude_none=True))
    write_batch(paths.input, 4)
    with pytest.raises(Failure) as caught:
        _ingest(instance, pipeline, key)
    assert f"a sha256 starting {key_hash(key)} (the dataset key)" in caught.value.description


def test_a_shim_key_need_not_hold_the_content_hash_but_a_recorded_hash_is_checked(instance, pipeline):
    key = "shim-b-0123456789"  # a non-deterministic batch: its key hash mixes in the batch id
    paths = pipeline.layout.dataset(key)
    write_batch(paths.input, 2)
    record = DatasetSource(source="shim", file_name="b.jsonl", batch_id="batch_1")
    paths.source.write_text(record.model_dump_json())
    assert _ingest(instance, pipeline, key).success

    paths.source.write_text(record.model_copy(update={"sha256": "0" * 64}).model_dump_json())
    with pytest.raises(Failure) as caught:
        materialize([batch_requests], partition_key=key, instance=instance, resources={"pipeline": pipeline})
    assert "upload the file again and create a new batch" in caught.value.description
