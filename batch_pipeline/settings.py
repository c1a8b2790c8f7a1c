"""Process-wide locations, read from the environment so the CLI tools, sensors and runs agree."""

import os
from pathlib import Path

DATA_DIR_ENV = "BATCH_PIPELINE_DATA"
POSTGRES_URL_ENV = "BATCH_PIPELINE_POSTGRES_URL"


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "data")).resolve()


def dagster_home() -> Path:
    """The instance the Makefile's commands use, also for tools started by hand."""
    return Path(os.environ.get("DAGSTER_HOME", "data/dagster_home")).resolve()
