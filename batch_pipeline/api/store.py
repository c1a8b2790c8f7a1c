"""The shim's own records (files and batches) in SQLite, shared by the API server and the sensors.

SQLite because both processes read and write it; records are pydantic objects stored as JSON.
"""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batch_pipeline.api.models import TERMINAL_STATUSES, BatchObject, FileObject

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, path TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, dataset TEXT NOT NULL,
    status TEXT NOT NULL, input_file_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);
CREATE INDEX IF NOT EXISTS batches_by_dataset ON batches (dataset);
"""


class ShimStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # Files
    def put_file(self, file: FileObject, path: Path) -> None:
        """Adds the file, or replaces the record of the same id (a batch's output written again)."""
        with self._connect() as db:
            db.execute("INSERT INTO files (id, path, body) VALUES (?, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET path = excluded.path, body = excluded.body",
                       (file.id, str(path), file.model_dump_json()))

    def file(self, file_id: str) -> tuple[FileObject, Path] | None:
        with self._connect() as db:
            row = db.execute("SELECT body, path FROM files WHERE id = ?", (file_id,)).fetchone()
        return (FileObject.model_validate_json(row[0]), Path(row[1])) if row else None

    def files(self, purpose: str | None, limit: int, after: str | None, newest_first: bool = True) -> list[FileObject]:
        where = "json_extract(body, '$.purpose') = ?" if purpose else None
        return [FileObject.model_validate_json(body)
                for body in self._page("files", limit, after, where, (purpose,) if purpose else (), newest_first)]

    def delete_file(self, file_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def file_in_use(self, file_id: str) -> bool:
        with self._connect() as db:
            rows = db.execute(
                "SELECT status FROM batches WHERE input_file_id = ? OR json_extract(body, '$.output_file_id') = ? "
                "OR json_extract(body, '$.error_file_id') = ?", (file_id, file_id, file_id)).fetchall()
        return any(status not in TERMINAL_STATUSES for (status,) in rows)

    # Batches
    def add_batch(self, batch: BatchObject, dataset: str) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO batches (id, dataset, status, input_file_id, body) VALUES (?, ?, ?, ?, ?)",
                       (batch.id, dataset, batch.status, batch.input_file_id, batch.model_dump_json()))

    def save_batch(self, batch: BatchObject) -> None:
        with self._connect() as db:
            db.execute("UPDATE batches SET status = ?, body = ? WHERE id = ?",
                       (batch.status, batch.model_dump_json(), batch.id))

    def batch(self, batch_id: str) -> tuple[BatchObject, str] | None:
        with self._connect() as db:
            row = db.execute("SELECT body, dataset FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return (BatchObject.model_validate_json(row[0]), row[1]) if row else None

    def batches(self, limit: int, after: str | None) -> list[BatchObject]:
        return [BatchObject.model_validate_json(body) for body in self._page("batches", limit, after, None, ())]

    def active_batches(self, dataset: str | None = None) -> list[tuple[BatchObject, str]]:
        """Unfinished batches, oldest first; only those of `dataset` when given."""
        placeholders = ",".join("?" * len(TERMINAL_STATUSES))
        where = f"status NOT IN ({placeholders})" + (" AND dataset = ?" if dataset else "")
        params = (*TERMINAL_STATUSES, *((dataset,) if dataset else ()))
        with self._connect() as db:
            rows = db.execute(f"SELECT body, dataset FROM batches WHERE {where} ORDER BY seq", params).fetchall()
        return [(BatchObject.model_validate_json(body), dataset) for body, dataset in rows]

    def status_counts(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status").fetchall())

    def totals(self) -> dict[str, int]:
        """Rows and tokens over every batch, as of each batch's last refresh."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COALESCE(SUM(json_extract(body, '$.request_counts.completed')"
                " + json_extract(body, '$.request_counts.failed')), 0),"
                " COALESCE(SUM(json_extract(body, '$.usage.input_tokens')), 0),"
                " COALESCE(SUM(json_extract(body, '$.usage.output_tokens')), 0) FROM batches").fetchone()
        return {"rows": row[0], "input_tokens": row[1], "output_tokens": row[2]}

    def _page(self, table: str, limit: int, after: str | None, where: str | None, params: tuple,
              newest_first: bool = True) -> list[str]:
        """`after` is the id of the last object of the previous page."""
        clauses, values = [], list(params)
        if where:
            clauses.append(where)
        if after:
            clauses.append(f"seq {'<' if newest_first else '>'} (SELECT seq FROM {table} WHERE id = ?)")
            values.append(after)
        sql = f"SELECT body FROM {table}" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
        order = "DESC" if newest_first else "ASC"
        with self._connect() as db:
            return [row[0] for row in db.execute(f"{sql} ORDER BY seq {order} LIMIT ?", (*values, limit)).fetchall()]
