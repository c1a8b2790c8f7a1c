"""The retention sensor runs every sweep in one tick, each on its own: one that fails is reported and
the others still remove what is old; its message says what went."""

from dagster import DagsterRunStatus, build_sensor_context
from dagster._core.test_utils import create_run_for_test

from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.retention.sensors import build_retention_sensor
from batch_pipeline_tests.support.aging import age, age_run
from batch_pipeline_tests.support.dagster_runs import job_origin


def _tick(instance, pipeline):
    sensor = build_retention_sensor(Settings(data_dir=pipeline.layout.root))
    return sensor(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))


def test_one_failing_sweep_does_not_stop_the_others(instance, pipeline, capsys):
    layout = pipeline.layout
    chunks = ChunkStore(layout.responses("a-1234567890", "m").chunks)
    chunks.folder.mkdir(parents=True)
    (chunks.folder / "chunk-00000.parquet").write_bytes(b"torn")
    [quarantined] = chunks.prepare().quarantined
    age(quarantined, 31)
    run = create_run_for_test(instance, job_name="ingest_batch", status=DagsterRunStatus.SUCCESS,
                              remote_job_origin=job_origin("ingest_batch"))
    age_run(instance, run.run_id, 31)
    (layout.trash / "b-1").mkdir(parents=True)  # a deletion a crash interrupted
    layout.inbox.mkdir()
    layout.rejected.write_text("not a folder")  # the rejected files cannot even be listed

    result = _tick(instance, pipeline)

    assert result.skip_message == "removed 1 interrupted deletions, 1 quarantined chunks, 1 runs"
    log = capsys.readouterr().err  # the sensor's log, as the daemon writes it
    assert "ERROR - retention: the sweep of rejected files failed: NotADirectoryError" in log
    assert f"INFO - retention: removed finished run {run.run_id}" in log
    assert not quarantined.exists() and instance.get_run_by_id(run.run_id) is None
    assert _tick(instance, pipeline).skip_message == "nothing is old enough to remove"


def test_nothing_old_is_a_quiet_tick(instance, pipeline):
    assert _tick(instance, pipeline).skip_message == "nothing is old enough to remove"
