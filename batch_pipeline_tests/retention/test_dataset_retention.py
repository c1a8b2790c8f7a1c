"""Datasets age out with their partitions on a real Dagster instance and the API's real store: an API
dataset once all its batches finished and lost their inputs, an inbox dataset after its configured age,
a partition whose folder is gone; never one a queued or running run uses, a live batch still reads, or
one a batch was just placed in."""

import logging
import time

from dagster import DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from batch_pipeline.api.models import BatchObject, FileObject
from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.storage import write_json_atomic
from batch_pipeline.intake.outbox import outbox_names
from batch_pipeline.intake.provenance import DatasetSource
from batch_pipeline.retention.datasets import DatasetSweep
from batch_pipeline_tests.support.aging import DAY, age, age_tree
from batch_pipeline_tests.support.dagster_runs import job_origin, ui_launched_run

LOG = logging.getLogger("test")


def _dataset(layout: DataLayout, key: str, source: str, days_old: float) -> None:
    paths = layout.dataset(key)
    (layout.responses(key, "m").chunks).mkdir(parents=True)
    paths.input.write_text("{}\n")
    write_json_atomic(paths.source, DatasetSource(source=source, file_name=f"{key}.jsonl").model_dump())
    age_tree(paths.folder, days_old)


def _file(store: ShimStore, file_id: str, expires_at: float | None = None) -> None:
    store.put_file(FileObject(id=file_id, bytes=3, created_at=1, filename="in.jsonl", purpose="batch",
                              expires_at=None if expires_at is None else int(expires_at)), f"/nowhere/{file_id}")


def _batch(store: ShimStore, batch_id: str, dataset: str, input_file_id: str, status: str) -> None:
    """Created from its input while that was live, then brought to `status`."""
    batch = BatchObject(id=batch_id, endpoint="/v1/chat/completions", input_file_id=input_file_id,
                        completion_window="24h", status="validating", created_at=1)
    assert store.add_batch(batch, dataset, now=time.time())
    store.save_batch(batch.model_copy(update={"status": status}))


def _sweep(instance, layout, store, inbox_days: float = 0) -> list[str]:
    return DatasetSweep(instance, layout, store, inbox_days, time.time(), LOG).run()


def test_api_datasets_go_once_every_batch_finished_and_lost_its_input(tmp_path, instance, caplog):
    layout, now = DataLayout(tmp_path), time.time()
    store = ShimStore(f"sqlite:///{tmp_path / 'shim.sqlite3'}")
    for file_id in ("file-expired", "file-deleted", "file-live", "file-kept"):
        _file(store, file_id)
    cases = {  # dataset: (batches as (status, input file), expected to go)
        "shim-expired": ([("completed", "file-expired")], True),
        "shim-deleted-input": ([("failed", "file-deleted")], True),
        "shim-input-still-there": ([("completed", "file-live")], False),
        "shim-shared-with-a-live-batch": ([("completed", "file-expired"), ("in_progress", "file-kept")], False),
        "shim-running-run": ([("expired", "file-expired")], False),
        "shim-queued-run": ([("cancelled", "file-expired")], False),
        "shim-just-placed": ([("completed", "file-expired")], False),
    }
    for number, (key, (uses, _)) in enumerate(cases.items()):
        _dataset(layout, key, "shim", 40)
        for index, (status, file_id) in enumerate(uses):
            _batch(store, f"batch_{number}_{index}", key, file_id, status)
    _file(store, "file-expired", now - 1)
    _file(store, "file-live", now + 10 * DAY)
    store.delete_file("file-deleted")
    age(layout.dataset("shim-just-placed").folder, 0)  # api.placement touched it: a batch is being placed
    instance.add_dynamic_partitions(DATASETS.name, [*cases, "orphan-partition"])
    ui_launched_run(instance, "shim-running-run", "m")
    create_run_for_test(instance, job_name="ingest_batch", status=DagsterRunStatus.QUEUED,
                        remote_job_origin=job_origin("ingest_batch"), tags={"dagster/partition": "shim-queued-run"})

    with caplog.at_level(logging.INFO):
        removed = _sweep(instance, layout, store)

    gone = sorted(key for key, (_, goes) in cases.items() if goes)
    assert removed == sorted([*gone, "orphan-partition"])
    assert set(instance.get_dynamic_partitions(DATASETS.name)) == {key for key, (_, goes) in cases.items() if not goes}
    for key, (_, goes) in cases.items():
        assert layout.dataset(key).folder.exists() != goes, key
    assert "retention: removed dataset shim-expired" in caplog.text
    assert "could not remove dataset shim-just-placed: DatasetInUse" in caplog.text
    assert list(layout.trash.iterdir()) == []


def test_inbox_datasets_are_kept_unless_an_age_is_set(tmp_path, instance):
    layout = DataLayout(tmp_path)
    _dataset(layout, "old-1234567890", "inbox", 40)
    _dataset(layout, "fresh-1234567890", "inbox", 2)
    _dataset(layout, "queued-1234567890", "inbox", 40)
    layout.outbox.mkdir()
    old_outcome = outbox_names(layout, "old-1234567890")
    for path in (old_outcome.output, old_outcome.errors):
        path.write_text("{}\n")
    age(old_outcome.output, 40)  # errors.jsonl is newer: a later file of the same name wrote it
    instance.add_dynamic_partitions(DATASETS.name, ["old-1234567890", "fresh-1234567890", "queued-1234567890"])
    create_run_for_test(instance, job_name="ingest_batch", status=DagsterRunStatus.QUEUED,
                        remote_job_origin=job_origin("ingest_batch"), tags={"dagster/partition": "queued-1234567890"})

    assert _sweep(instance, layout, None) == []  # the default: kept
    assert _sweep(instance, layout, None, inbox_days=30) == ["old-1234567890"]

    assert not layout.dataset("old-1234567890").folder.exists()
    assert not old_outcome.output.exists() and old_outcome.errors.exists()
    assert set(instance.get_dynamic_partitions(DATASETS.name)) == {"fresh-1234567890", "queued-1234567890"}


def test_an_inbox_dataset_changed_lately_is_kept_however_old_its_input(tmp_path, instance):
    layout = DataLayout(tmp_path)
    _dataset(layout, "reviewed-1234567890", "inbox", 400)
    reviewed = layout.dataset("reviewed-1234567890").reviewed
    reviewed.parent.mkdir()
    reviewed.write_bytes(b"PAR1")  # a review handed back today
    assert _sweep(instance, layout, None, inbox_days=30) == []


def test_nothing_goes_while_a_run_works_on_a_range_of_partitions(tmp_path, instance):
    layout = DataLayout(tmp_path)
    _dataset(layout, "old-1234567890", "inbox", 40)
    instance.add_dynamic_partitions(DATASETS.name, ["old-1234567890", "orphan-partition"])
    create_run_for_test(instance, job_name="__ASSET_JOB", status=DagsterRunStatus.STARTED,
                        tags={"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "z"})
    assert _sweep(instance, layout, None, inbox_days=30) == []
    assert set(instance.get_dynamic_partitions(DATASETS.name)) == {"old-1234567890", "orphan-partition"}
