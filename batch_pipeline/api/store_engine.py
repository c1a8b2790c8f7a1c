"""Where the API's store lives and how to reach it: SQLite in the data folder (the embedded default) or
the PostgreSQL that holds Dagster's storage (`BATCH_PIPELINE_POSTGRES_URL`), as a SQLAlchemy engine.

On PostgreSQL the store's tables live in their own schema, so they never meet Dagster's tables (nor
its `alembic_version`). On SQLite every writing transaction is `BEGIN IMMEDIATE`: it takes the write
lock up front, so two writers queue on the busy timeout instead of failing on a lock upgrade.
"""

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from batch_pipeline.core.layout import DataLayout

POSTGRES_SCHEMA = "batch_pipeline_api"
# A reading connection asks for a deferred transaction (a snapshot) instead of the write lock.
READ_ONLY = {"batch_pipeline_read_only": True}
_SQLITE_BUSY_SECONDS = 30


def store_url(layout: DataLayout, postgres_url: str | None) -> str:
    """PostgreSQL when configured (the database Dagster uses), else `shim.sqlite3` in the data folder."""
    return postgres_url if postgres_url else f"sqlite:///{layout.shim_database}"


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def create_store_engine(url: str, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """`pool_size` and `max_overflow` size PostgreSQL's connection pool."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(Path(parsed.database))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"the API store needs a sqlite:// or postgresql:// URL, not {parsed.drivername}://")
    # psycopg2 comes with dagster-postgres; name it, so a newer SQLAlchemy's default driver is never looked for.
    return create_engine(parsed.set(drivername="postgresql+psycopg2"), pool_pre_ping=True, pool_size=pool_size,
                         max_overflow=max_overflow, connect_args={"options": f"-csearch_path={POSTGRES_SCHEMA}",
                                                        "connect_timeout": 10})


def _sqlite_engine(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": _SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_SECONDS * 1000}")

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        read_only = connection.get_execution_options().get("batch_pipeline_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine
