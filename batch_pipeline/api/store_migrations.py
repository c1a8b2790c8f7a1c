"""The store's schema, brought to the newest revision of `migrations/versions` at start-up (Alembic,
run from code: no alembic.ini at run time). Several processes may start at once: on PostgreSQL they
queue on an advisory lock, on SQLite on the write lock, and the later ones find nothing to do."""

from pathlib import Path

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from batch_pipeline.api.store_engine import POSTGRES_SCHEMA, is_postgres

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant: the two-key advisory lock space is separate from the one-key one other tools use.
_MIGRATION_LOCK = (0x62617463, 1)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine) -> None:
    """Applies every revision the store lacks, in one transaction (DDL is transactional on both)."""
    config = _config()
    script = ScriptDirectory.from_config(config)
    with engine.connect() as connection, connection.begin():
        if is_postgres(engine):
            connection.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"),
                               {"a": _MIGRATION_LOCK[0], "b": _MIGRATION_LOCK[1]})
            # Checked first: creating needs CREATE on the database even when the schema exists already.
            if not connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :name"),
                                      {"name": POSTGRES_SCHEMA}).first():
                connection.execute(text(f"CREATE SCHEMA {POSTGRES_SCHEMA}"))
        with EnvironmentContext(config, script,
                                fn=lambda revision, _context: script._upgrade_revs("head", revision)) as env:
            env.configure(connection=connection, transactional_ddl=True)
            env.run_migrations()
