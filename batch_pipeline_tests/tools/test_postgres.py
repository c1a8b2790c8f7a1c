"""The same instance preparation and materialization on the local PostgreSQL (dagster-postgres)."""

import psycopg2
from dagster import DagsterInstance, materialize

from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.settings import POSTGRES_URL_ENV
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline.tools.prepare_instance import GPU_POOL, prepare_instance
from batch_pipeline_tests.support.batches import write_batch

KEY = "pg-0123456789"


def test_materializes_on_postgres_storage(postgres_url, pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv(POSTGRES_URL_ENV, postgres_url)
    home = tmp_path / "dagster_home"
    prepare_instance(home, postgres_url)
    assert postgres_url not in (home / "dagster.yaml").read_text()

    write_batch(pipeline.layout.dataset(KEY).input, 20)
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1
        instance.add_dynamic_partitions(DATASETS.name, [KEY])
        result = materialize([batch_requests], partition_key=KEY, instance=instance,
                             resources={"pipeline": pipeline})
        assert result.success
        assert instance.get_latest_materialization_event(batch_requests.key).dagster_event.partition == KEY

    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cursor.fetchone() == ("SUCCESS",)
