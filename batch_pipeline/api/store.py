"""The shim's own records (files, batches, output retention, the webhook outbox), shared by the API
replicas and the sensors: SQLite in the data folder by default, or the PostgreSQL Dagster uses
(store_engine). Records are pydantic objects stored as JSON, with the fields queries filter on copied
into columns. Every change that must happen together is one transaction.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Connection, Engine, and_, func, not_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from batch_pipeline.api.batch_locks import BatchLocks
from batch_pipeline.api.models import TERMINAL_STATUSES, BatchObject, FileObject, WebhookEvent
from batch_pipeline.api.store_engine import READ_ONLY, create_store_engine, is_postgres
from batch_pipeline.api.store_migrations import upgrade
from batch_pipeline.api.store_tables import batch_output_retention, batches, files, webhook_events


class ShimStore:
    def __init__(self, url: str):
        """Opens the store at `url` (store_engine.store_url), bringing its schema up to date."""
        self.engine: Engine = create_store_engine(url)
        upgrade(self.engine)
        # Advisory locks wait on connections of their own, so they never starve the queries' pool.
        self.batch_locks = BatchLocks(create_store_engine(url, pool_size=2, max_overflow=40)
                                      if is_postgres(self.engine) else None)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(**READ_ONLY) as db, db.begin():
            yield db

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.begin() as db:
            yield db

    def _insert(self, table):
        """An INSERT that can say ON CONFLICT, in the store's dialect."""
        return (postgresql if is_postgres(self.engine) else sqlite).insert(table)

    # Files
    def put_file(self, file: FileObject, path: Path) -> None:
        """Adds the file, or replaces the record of the same id (a batch's output written again)."""
        values = {"path": str(path), "body": file.model_dump_json(), "purpose": file.purpose,
                  "expires_at": file.expires_at}
        with self._write() as db:
            db.execute(self._insert(files).values(id=file.id, **values)
                       .on_conflict_do_update(index_elements=[files.c.id], set_=values))

    def file(self, file_id: str) -> tuple[FileObject, Path] | None:
        with self._read() as db:
            row = db.execute(select(files.c.body, files.c.path).where(files.c.id == file_id)).first()
        return (FileObject.model_validate_json(row.body), Path(row.path)) if row else None

    def files(self, purpose: str | None, limit: int, after: str | None, now: float,
              newest_first: bool = True) -> list[FileObject]:
        """Files not yet expired (the retention sensor may not have deleted them yet)."""
        where = [_unexpired(now)] + ([files.c.purpose == purpose] if purpose else [])
        return [FileObject.model_validate_json(body) for body in self._page(files, limit, after, where, newest_first)]

    def expired_files(self, now: float) -> list[tuple[str, Path]]:
        with self._read() as db:
            rows = db.execute(select(files.c.id, files.c.path).where(not_(_unexpired(now)))).all()
        return [(row.id, Path(row.path)) for row in rows]

    def delete_file(self, file_id: str) -> None:
        with self._write() as db:
            db.execute(files.delete().where(files.c.id == file_id))

    def delete_unused_file(self, file_id: str) -> bool:
        """Deletes the file's record unless an unfinished batch uses it (then False). The record stays
        locked meanwhile, so no batch can start using it between the check and the deletion."""
        with self._write() as db:
            db.execute(select(files.c.id).where(files.c.id == file_id).with_for_update())
            users = db.execute(select(batches.c.status).where(or_(
                batches.c.input_file_id == file_id, batches.c.output_file_id == file_id,
                batches.c.error_file_id == file_id))).scalars()
            if any(status not in TERMINAL_STATUSES for status in users):
                return False
            db.execute(files.delete().where(files.c.id == file_id))
        return True

    # Batches
    def add_batch(self, batch: BatchObject, dataset: str, now: float, output_expires_after: int | None = None) -> bool:
        """Records the batch unless its input file is gone or expired by now (then False); the file's
        record is locked meanwhile, so it cannot be deleted under the new batch."""
        with self._write() as db:
            usable = db.execute(select(files.c.id).where(files.c.id == batch.input_file_id, _unexpired(now))
                                .with_for_update(read=True)).first()
            if usable is None:
                return False
            db.execute(batches.insert().values(id=batch.id, dataset=dataset, input_file_id=batch.input_file_id,
                                               **_batch_columns(batch)))
            if output_expires_after is not None:
                db.execute(batch_output_retention.insert().values(batch_id=batch.id, seconds=output_expires_after))
        return True

    def output_expires_after(self, batch_id: str) -> int | None:
        with self._read() as db:
            return db.execute(select(batch_output_retention.c.seconds)
                              .where(batch_output_retention.c.batch_id == batch_id)).scalar()

    def save_batch(self, batch: BatchObject, event: WebhookEvent | None = None) -> None:
        """With `event`, the batch and the event announcing its new status are recorded together: a
        crash can lose neither one alone. An event of a type already recorded for the batch is dropped,
        so however many replicas see the transition, it is announced once."""
        with self._write() as db:
            db.execute(update(batches).where(batches.c.id == batch.id).values(**_batch_columns(batch)))
            if event is not None:
                db.execute(self._insert(webhook_events)
                           .values(id=event.id, batch_id=event.data.id, type=event.type,
                                   body=event.model_dump_json(), next_attempt_at=0)
                           .on_conflict_do_nothing(index_elements=[webhook_events.c.batch_id, webhook_events.c.type]))

    def batch(self, batch_id: str) -> tuple[BatchObject, str] | None:
        with self._read() as db:
            row = db.execute(select(batches.c.body, batches.c.dataset).where(batches.c.id == batch_id)).first()
        return (BatchObject.model_validate_json(row.body), row.dataset) if row else None

    def batches(self, limit: int, after: str | None) -> list[BatchObject]:
        return [BatchObject.model_validate_json(body) for body in self._page(batches, limit, after, [])]

    def active_batches(self, dataset: str | None = None) -> list[tuple[BatchObject, str]]:
        """Unfinished batches, oldest first; only those of `dataset` when given."""
        query = select(batches.c.body, batches.c.dataset).where(batches.c.status.not_in(TERMINAL_STATUSES))
        if dataset:
            query = query.where(batches.c.dataset == dataset)
        with self._read() as db:
            rows = db.execute(query.order_by(batches.c.seq)).all()
        return [(BatchObject.model_validate_json(row.body), row.dataset) for row in rows]

    def retired_datasets(self, now: float) -> set[str]:
        """Datasets whose every batch has finished and whose every batch's input file is gone, expired or
        deleted: the API reads them no more (a batch's output and error files are copies of their own)."""
        used, kept = self._dataset_uses(now)
        return used - kept

    def dataset_in_use(self, dataset: str, now: float) -> bool:
        """Whether a batch of the dataset is unfinished or its input file can still be fetched."""
        return bool(self._dataset_uses(now, dataset)[1])

    def _dataset_uses(self, now: float, dataset: str | None = None) -> tuple[set[str], set[str]]:
        """(datasets batches used, those of them still in use); of `dataset` alone when given."""
        input_file = batches.outerjoin(files, files.c.id == batches.c.input_file_id)
        query = select(batches.c.dataset, batches.c.status, files.c.id.label("file_id"), files.c.expires_at) \
            .select_from(input_file)
        if dataset:
            query = query.where(batches.c.dataset == dataset)
        with self._read() as db:
            rows = db.execute(query).all()
        kept = {row.dataset for row in rows if row.status not in TERMINAL_STATUSES
                or (row.file_id is not None and (row.expires_at is None or row.expires_at > now))}
        return {row.dataset for row in rows}, kept

    def status_counts(self) -> dict[str, int]:
        with self._read() as db:
            return dict(db.execute(select(batches.c.status, func.count()).group_by(batches.c.status)).tuples().all())

    def _page(self, table, limit: int, after: str | None, where: list, newest_first: bool = True) -> list[str]:
        """`after` is the id of the last object of the previous page."""
        if after:
            anchor = select(table.c.seq).where(table.c.id == after).scalar_subquery()
            where = [*where, table.c.seq < anchor if newest_first else table.c.seq > anchor]
        order = table.c.seq.desc() if newest_first else table.c.seq.asc()
        with self._read() as db:
            return list(db.execute(select(table.c.body).where(*where).order_by(order).limit(limit)).scalars())

    # Webhook outbox
    def claim_webhook_event(self, now: float, lease_seconds: float) -> tuple[str, str, int] | None:
        """(id, body, attempts so far) of the oldest undelivered event that is due and unclaimed, now
        claimed for `lease_seconds`: no other sender takes it meanwhile, and a sender that dies holding
        it only delays it by the lease. Replicas passing at once skip each other's rows."""
        due = and_(webhook_events.c.delivered_at.is_(None), webhook_events.c.gave_up_at.is_(None),
                   webhook_events.c.next_attempt_at <= now,
                   or_(webhook_events.c.claimed_until.is_(None), webhook_events.c.claimed_until <= now))
        with self._write() as db:
            row = db.execute(select(webhook_events.c.id, webhook_events.c.body, webhook_events.c.attempts)
                             .where(due).order_by(webhook_events.c.seq).limit(1)
                             .with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            db.execute(update(webhook_events).where(webhook_events.c.id == row.id)
                       .values(claimed_until=now + lease_seconds))
        return row.id, row.body, row.attempts

    def release_webhook_claim(self, event_id: str) -> None:
        with self._write() as db:
            db.execute(update(webhook_events).where(webhook_events.c.id == event_id).values(claimed_until=None))

    def webhook_delivered(self, event_id: str, now: float) -> None:
        with self._write() as db:
            db.execute(update(webhook_events).where(webhook_events.c.id == event_id).values(
                delivered_at=now, attempts=webhook_events.c.attempts + 1, last_attempt_at=now, last_error=None,
                claimed_until=None))

    def webhook_failed(self, event_id: str, now: float, error: str, retry_at: float | None) -> None:
        """`retry_at` None: no attempt is left."""
        retry = {"next_attempt_at": retry_at} if retry_at is not None else {"gave_up_at": now}
        with self._write() as db:
            db.execute(update(webhook_events).where(webhook_events.c.id == event_id).values(
                attempts=webhook_events.c.attempts + 1, last_attempt_at=now, last_error=error, claimed_until=None,
                **retry))

    def webhook_events(self, batch_id: str) -> list[dict]:
        with self._read() as db:
            rows = db.execute(select(webhook_events).where(webhook_events.c.batch_id == batch_id)
                              .order_by(webhook_events.c.seq)).mappings().all()
        return [dict(row) for row in rows]

    def failing_webhook_events(self, gave_up_since: float, limit: int = 20) -> list[dict]:
        """Undelivered events whose last attempt failed: retrying, or given up after `gave_up_since`."""
        with self._read() as db:
            rows = db.execute(select(webhook_events).where(
                webhook_events.c.delivered_at.is_(None), webhook_events.c.last_error.is_not(None),
                or_(webhook_events.c.gave_up_at.is_(None), webhook_events.c.gave_up_at >= gave_up_since))
                .order_by(webhook_events.c.seq.desc()).limit(limit)).mappings().all()
        return [dict(row) for row in rows]


def _unexpired(now: float):
    return or_(files.c.expires_at.is_(None), files.c.expires_at > now)


def _batch_columns(batch: BatchObject) -> dict:
    return {"status": batch.status, "body": batch.model_dump_json(), "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id}


@lru_cache(maxsize=8)
def shared_store(url: str) -> ShimStore:
    """One store per URL and process, for the sensors: their ticks reuse its connections and migrate once."""
    return ShimStore(url)
