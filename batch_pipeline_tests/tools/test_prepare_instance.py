"""The instance `make run` prepares purges old ticks itself, for as long as the setting says."""

from dagster import DagsterInstance
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import TickStatus

from batch_pipeline.tools.prepare_instance import prepare_instance


def test_dagster_purges_ticks_after_the_configured_days(tmp_path):
    prepare_instance(tmp_path, postgres_url=None, tick_retention_days=7)
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        sensor_ticks = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        schedule_ticks = instance.get_tick_retention_settings(InstigatorType.SCHEDULE)
    assert sensor_ticks == {TickStatus.SKIPPED: 1, TickStatus.FAILURE: 7, TickStatus.SUCCESS: 7,
                            TickStatus.STARTED: -1}  # a tick in progress is never purged
    assert schedule_ticks[TickStatus.SUCCESS] == schedule_ticks[TickStatus.FAILURE] == 7
