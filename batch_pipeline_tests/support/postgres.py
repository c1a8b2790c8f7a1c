"""A fresh database on the local PostgreSQL, for the store and instance tests."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
# Set by .ci/run: a PostgreSQL that does not answer fails these tests instead of skipping them.
REQUIRE_POSTGRES_ENV = "BATCH_PIPELINE_TEST_REQUIRE_POSTGRES"


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new database, dropped afterwards; skips the test if no PostgreSQL answers."""
    import psycopg2

    try:
        admin = psycopg2.connect(f"{POSTGRES_SERVER}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        reason = f"no PostgreSQL answers at {POSTGRES_SERVER} (trust auth expected): {str(exc).strip()}"
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_POSTGRES_ENV}=1 makes this mandatory")
        pytest.skip(reason)
    name = f"batch_pipeline_test_{uuid.uuid4().hex[:12]}"
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
