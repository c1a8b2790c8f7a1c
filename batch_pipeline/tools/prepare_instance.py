"""Prepares $DAGSTER_HOME: the instance config (SQLite, or PostgreSQL when its URL is set) and the
GPU pool limit, one run per accelerator slot (`BATCH_PIPELINE_GPU_SLOTS`)."""

import sys
from pathlib import Path

import yaml

from batch_pipeline.core.names import GPU_POOL
from batch_pipeline.core.settings import POSTGRES_URL_ENV, Settings, load_settings_or_exit
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.core.storage import write_text_atomic

_PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "dagster.yaml"
_TICK_RETENTION_DAYS = Settings.model_fields["tick_retention_days"].default


def instance_config(postgres_url: str | None, tick_retention_days: int = _TICK_RETENTION_DAYS) -> dict:
    config = yaml.safe_load(_PROJECT_CONFIG.read_text())
    retention = config["retention"]
    retention["schedule"]["purge_after_days"] = tick_retention_days
    retention["sensor"]["purge_after_days"].update(failure=tick_retention_days, success=tick_retention_days)
    if postgres_url:
        # Read from the environment at load time so the URL (and any password) is not written out.
        config["storage"] = {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}
    return config


def prepare_instance(home: Path, postgres_url: str | None, gpu_slots: int = 1,
                     tick_retention_days: int = _TICK_RETENTION_DAYS) -> None:
    home.mkdir(parents=True, exist_ok=True)
    config = instance_config(postgres_url, tick_retention_days)
    write_text_atomic(home / "dagster.yaml", yaml.safe_dump(config, sort_keys=False))
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, gpu_slots)


def main() -> None:
    settings = load_settings_or_exit("prepare_instance")
    home, url, slots = settings.dagster_home, settings.postgres_url, len(parse_slots(settings.gpu_slots))
    prepare_instance(home, url, slots, settings.tick_retention_days)
    print(f"dagster instance ready: {home} ({'postgres' if url else 'sqlite'}, pool {GPU_POOL}={slots})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
