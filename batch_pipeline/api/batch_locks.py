"""One holder per batch record at a time, while it moves the batch on (refresh, cancel).

Within a process: striped re-entrant locks, so a slow or broken batch never holds up the others.
Across processes (API replicas on PostgreSQL): a session advisory lock per batch, taken on a
connection of its own (writes go through other connections, which advisory locks never block) and
released by the server if the process dies. SQLite serves one API process, so the first suffices.
"""

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

_STRIPES = 64
# Key space of these locks among the two-key advisory locks (any constant; "batd").
ADVISORY_LOCK_CLASS = 0x62617464


class BatchBusy(Exception):
    """Another process held the batch past the deadline."""


def _lock_key(batch_id: str) -> int:
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:4], "big", signed=True)


class BatchLocks:
    def __init__(self, lock_engine: Engine | None, wait_seconds: float = 300.0):
        """`lock_engine`: PostgreSQL connections for the advisory locks; None for in-process only."""
        self._stripes = [threading.RLock() for _ in range(_STRIPES)]
        self._engine, self._wait_seconds = lock_engine, wait_seconds
        self._held = threading.local()  # the batches this thread holds across processes

    @contextmanager
    def hold(self, batch_id: str, wait: bool = True) -> Iterator[bool]:
        """Yields whether the batch is held; False only when `wait` is False and someone else holds it.
        Re-entrant within a thread. Raises BatchBusy when waiting passes the deadline."""
        stripe = self._stripes[hash(batch_id) % _STRIPES]
        if not (stripe.acquire(timeout=self._wait_seconds) if wait else stripe.acquire(blocking=False)):
            if wait:
                raise BatchBusy(f"batch {batch_id} was held by another request for over {self._wait_seconds:.0f} s")
            yield False
            return
        try:
            held = self._held.__dict__.setdefault("batches", set())
            if self._engine is None or batch_id in held:
                yield True
                return
            with self._across_processes(batch_id, wait) as acquired:
                if acquired:
                    held.add(batch_id)
                try:
                    yield acquired
                finally:
                    held.discard(batch_id)
        finally:
            stripe.release()

    @contextmanager
    def _across_processes(self, batch_id: str, wait: bool) -> Iterator[bool]:
        key = {"kind": ADVISORY_LOCK_CLASS, "key": _lock_key(batch_id)}
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        acquired = False
        try:
            acquired = self._acquire(connection, key, batch_id) if wait else \
                connection.execute(text("SELECT pg_try_advisory_lock(:kind, :key)"), key).scalar()
            yield acquired
        finally:
            try:
                if acquired:
                    connection.execute(text("SELECT pg_advisory_unlock(:kind, :key)"), key)
            except Exception:
                connection.invalidate()  # closes the session, and with it the lock
            finally:
                connection.close()

    def _acquire(self, connection, key: dict[str, int], batch_id: str) -> bool:
        connection.execute(text("SELECT set_config('lock_timeout', :timeout, false)"),
                           {"timeout": f"{int(self._wait_seconds * 1000)}ms"})
        try:
            connection.execute(text("SELECT pg_advisory_lock(:kind, :key)"), key)
        except OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
                raise
            raise BatchBusy(f"batch {batch_id} was held by another API replica for over "
                            f"{self._wait_seconds:.0f} s") from None
        return True
