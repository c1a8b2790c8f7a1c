"""The shim's per-chunk tallies: right after a run reuses the number of a chunk it quarantined (so the
batch completes instead of expiring with every row done), and forgotten once the batch is finished."""

import uuid

from dagster import DagsterRun, DagsterRunStatus

from batch_pipeline.api.chunk_tallies import ChunkTallies
from batch_pipeline.core.names import BATCH_ID_TAG
from batch_pipeline.core.partitions import DATASET_MODELS, dataset_model_key
from batch_pipeline.generation import results
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import write_output_files
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.shim_client import (
    answer_rows,
    create_batch,
    shim_client,
    started_run,
    upload_file,
    validate_batch,
)


def test_a_reused_chunk_number_is_tallied_again_and_the_batch_completes(pipeline, instance):
    ids = ["r0", "r1", "r2"]
    with shim_client(pipeline, instance) as client:
        batch_id = create_batch(client, upload_file(client, [request_line(custom_id) for custom_id in ids]).json()["id"]).json()["id"]
        dataset = validate_batch(pipeline, instance, client, batch_id)
        paths = pipeline.layout.responses(dataset, MODEL)
        store = ChunkStore(paths.chunks)
        started_run(instance, dataset, batch_id)
        store.write(0, answer_rows({0: "r0"}))
        last = store.write(1, answer_rows({1: "r1"}))  # a short chunk: the run flushed it on time
        shown = client.get(f"/v1/batches/{batch_id}").json()
        assert shown["status"] == "in_progress" and shown["request_counts"]["completed"] == 2

        # The disk truncates that chunk; the run's retry quarantines it and reuses its number for more rows.
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        assert [path.name.split(".parquet")[0] for path in store.prepare().quarantined] == ["chunk-00001"]
        assert store.next_number() == 1
        store.write(1, answer_rows({1: "r1", 2: "r2"}))
        write_output_files(store, paths.output, paths.errors)
        tags = {**DATASET_MODELS.get_tags_for_partition_key(dataset_model_key(dataset, MODEL)), BATCH_ID_TAG: batch_id}
        instance.add_run(DagsterRun(job_name="generate_responses", run_id=str(uuid.uuid4()),
                                    status=DagsterRunStatus.SUCCESS, tags=tags))

        service = client.app.state.service
        service.refresh_active()
        done = client.get(f"/v1/batches/{batch_id}").json()
        assert done["status"] == "completed"
        assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
        assert service._tallies.cells() == 0  # forgotten with the batch


def test_each_chunk_is_read_once_and_a_chunk_gone_is_dropped(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path / "chunks")
    first, second = store.write(0, answer_rows({0: "a"})), store.write(1, answer_rows({1: "b", 2: "c"}))
    reads = []
    index = results.chunk_index
    monkeypatch.setattr(results, "chunk_index", lambda path: reads.append(path.name) or index(path))
    tallies = ChunkTallies()
    assert tallies.cell_lines(store).totals.rows == 3 and tallies.cell_lines(store).totals.rows == 3
    assert reads == [first.name, second.name]
    second.unlink()
    assert tallies.cell_lines(store).totals.rows == 1 and reads == [first.name, second.name]
    tallies.forget(store.folder)
    assert tallies.cells() == 0
