"""The shim's own records (files and batches) in SQLite, shared by the API server and the sensors.

SQLite because both processes read and write it; records are pydantic objects stored as JSON.
"""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batch_pipeline.api.models import TERMINAL_STATUSES, BatchObject, FileObject, WebhookEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, path TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, dataset TEXT NOT NULL,
    status TEXT NOT NULL, input_file_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);
CREATE INDEX IF NOT EXISTS batches_by_dataset ON batches (dataset);
-- output_expires_after of batches that asked for it (OpenAI's batch object does not show it).
CREATE TABLE IF NOT EXISTS batch_output_retention (batch_id TEXT PRIMARY KEY, seconds INTEGER NOT NULL);
-- The webhook outbox: one row per (batch, event type), written with the transition it announces.
CREATE TABLE IF NOT EXISTS webhook_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, batch_id TEXT NOT NULL, type TEXT NOT NULL,
    body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    delivered_at REAL, gave_up_at REAL, last_error TEXT, last_attempt_at REAL, UNIQUE (batch_id, type));
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (delivered_at, gave_up_at, next_attempt_at);
"""
_UNEXPIRED = "(json_extract(body, '$.expires_at') IS NULL OR json_extract(body, '$.expires_at') > ?)"


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


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

    def files(self, purpose: str | None, limit: int, after: str | None, now: float,
              newest_first: bool = True) -> list[FileObject]:
        """Files not yet expired (the retention sensor may not have deleted them yet)."""
        where = _UNEXPIRED + (" AND json_extract(body, '$.purpose') = ?" if purpose else "")
        params = (now, purpose) if purpose else (now,)
        return [FileObject.model_validate_json(body) for body in self._page("files", limit, after, where, params,
                                                                            newest_first)]

    def expired_files(self, now: float) -> list[tuple[str, Path]]:
        with self._connect() as db:
            rows = db.execute(f"SELECT id, path FROM files WHERE NOT {_UNEXPIRED}", (now,)).fetchall()
        return [(file_id, Path(path)) for file_id, path in rows]

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
    def add_batch(self, batch: BatchObject, dataset: str, output_expires_after: int | None = None) -> None:
        with self._connect() as db, _transaction(db):
            db.execute("INSERT INTO batches (id, dataset, status, input_file_id, body) VALUES (?, ?, ?, ?, ?)",
                       (batch.id, dataset, batch.status, batch.input_file_id, batch.model_dump_json()))
            if output_expires_after is not None:
                db.execute("INSERT INTO batch_output_retention (batch_id, seconds) VALUES (?, ?)",
                           (batch.id, output_expires_after))

    def output_expires_after(self, batch_id: str) -> int | None:
        with self._connect() as db:
            row = db.execute("SELECT seconds FROM batch_output_retention WHERE batch_id = ?", (batch_id,)).fetchone()
        return row[0] if row else None

    def save_batch(self, batch: BatchObject, event: WebhookEvent | None = None) -> None:
        """With `event`, the batch and the event announcing its new status are recorded together: a
        crash can lose neither one alone. An event of a type already recorded for the batch is dropped."""
        with self._connect() as db, _transaction(db):
            db.execute("UPDATE batches SET status = ?, body = ? WHERE id = ?",
                       (batch.status, batch.model_dump_json(), batch.id))
            if event is not None:
                db.execute("INSERT OR IGNORE INTO webhook_events (id, batch_id, type, body, next_attempt_at) "
                           "VALUES (?, ?, ?, ?, 0)", (event.id, event.data.id, event.type, event.model_dump_json()))

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

    # Webhook outbox
    def due_webhook_events(self, now: float, limit: int = 100) -> list[tuple[str, str, int]]:
        """(id, body, attempts so far) of undelivered events whose next attempt is due, oldest first."""
        with self._connect() as db:
            return db.execute("SELECT id, body, attempts FROM webhook_events WHERE delivered_at IS NULL "
                              "AND gave_up_at IS NULL AND next_attempt_at <= ? ORDER BY seq LIMIT ?",
                              (now, limit)).fetchall()

    def webhook_delivered(self, event_id: str, now: float) -> None:
        with self._connect() as db:
            db.execute("UPDATE webhook_events SET delivered_at = ?, attempts = attempts + 1, last_attempt_at = ?, "
                       "last_error = NULL WHERE id = ?", (now, now, event_id))

    def webhook_failed(self, event_id: str, now: float, error: str, retry_at: float | None) -> None:
        """`retry_at` None: no attempt is left."""
        with self._connect() as db:
            db.execute("UPDATE webhook_events SET attempts = attempts + 1, last_attempt_at = ?, last_error = ?, "
                       "next_attempt_at = COALESCE(?, next_attempt_at), gave_up_at = CASE WHEN ? IS NULL "
                       "THEN ? END WHERE id = ?", (now, error, retry_at, retry_at, now, event_id))

    def webhook_events(self, batch_id: str) -> list[dict]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM webhook_events WHERE batch_id = ? ORDER BY seq", (batch_id,)).fetchall()
        return [dict(row) for row in rows]

    def failing_webhook_events(self, gave_up_since: float, limit: int = 20) -> list[dict]:
        """Undelivered events whose last attempt failed: retrying, or given up after `gave_up_since`."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM webhook_events WHERE delivered_at IS NULL AND last_error IS NOT NULL "
                              "AND (gave_up_at IS NULL OR gave_up_at >= ?) ORDER BY seq DESC LIMIT ?",
                              (gave_up_since, limit)).fetchall()
        return [dict(row) for row in rows]
