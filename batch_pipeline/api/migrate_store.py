"""`python -m batch_pipeline.api.migrate_store --to postgresql://...`: copies the API's SQLite store
(files, batches, output retention, webhook outbox) into PostgreSQL, the store API replicas share.

Stop the API first. The target must hold no records yet; ids, order and webhook state are kept, so
batches go on where they were and no event is announced twice. Records name files under the data
folder by path: every replica must mount it at the same path.
"""

import argparse
import sys
from pathlib import Path

from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import OperationalError

from batch_pipeline.api.store import ShimStore
from batch_pipeline.api.store_engine import is_postgres
from batch_pipeline.api.store_tables import TABLES
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.settings import Settings

_ROWS_PER_INSERT = 1000


class MigrationRefused(Exception):
    """What is wrong, said so the user can fix it; nothing was written."""


def copy_store(source: Path, target_url: str) -> dict[str, int]:
    """Copies every record of the SQLite store at `source` into the store at `target_url` in one
    transaction; returns how many rows each table got."""
    if not source.is_file():
        raise MigrationRefused(f"no SQLite store at {source} (set BATCH_PIPELINE_DATA or pass --from)")
    target = ShimStore(target_url)
    if not is_postgres(target.engine):
        raise MigrationRefused("--to must be a postgresql:// URL")
    reader = ShimStore(f"sqlite:///{source}")  # brought to the same schema revision first
    with target.engine.begin() as db:
        held = {table.name: db.execute(select(func.count()).select_from(table)).scalar() for table in TABLES}
        if any(held.values()):
            raise MigrationRefused("the target store already holds records ("
                                   + ", ".join(f"{n} {name}" for name, n in held.items() if n)
                                   + "); copy into a database whose API store is empty")
        copied = {}
        with reader.engine.connect() as src:
            for table in TABLES:
                rows = [dict(row) for row in src.execute(select(table)).mappings()]
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    db.execute(insert(table), rows[start:start + _ROWS_PER_INSERT])
                copied[table.name] = len(rows)
        for table in TABLES:
            if "seq" in table.c:  # new records continue after the copied ones
                db.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'seq'), "
                                f"COALESCE(MAX(seq), 0) + 1, false) FROM {table.name}"))
    return copied


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m batch_pipeline.api.migrate_store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", default=settings.postgres_url,
                        help="the PostgreSQL URL (default: BATCH_PIPELINE_POSTGRES_URL)")
    parser.add_argument("--from", dest="source", type=Path, default=DataLayout(settings.data_dir).shim_database,
                        help="the SQLite store (default: shim/shim.sqlite3 in BATCH_PIPELINE_DATA)")
    args = parser.parse_args(argv)
    if args.to is None:
        parser.error("--to is required when BATCH_PIPELINE_POSTGRES_URL is not set")
    try:
        copied = copy_store(args.source, args.to)
    except MigrationRefused as exc:
        print(f"migrate_store: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        print(f"migrate_store: cannot reach the target database: {str(exc.orig).strip()}", file=sys.stderr)
        return 2
    print("copied " + ", ".join(f"{n} {name}" for name, n in copied.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
