"""Deterministic answers kept across batches (opt-in: BATCH_PIPELINE_RESULT_CACHE), so a later batch that
asks the same of the same engine is answered without it.

An answer is stored under the engine's fingerprint (generation.engine.identity: weights, engine
arguments, adapter, default sampling, vLLM version; one SQLite file each) and the request's key
(generation.feed.request_key: endpoint and body, fields without effect aside). Only deterministic
requests (greedy, seeded, embeddings) are looked up, and only answers without error are stored. Every
answer served from here is marked `reused="result_cache"`. Entries older than the retention are dropped
when a run opens the file; files no run wrote to for that long are deleted.
"""

import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

from pydantic import ValidationError

from batch_pipeline.core.privacy import private_folder
from batch_pipeline.core.registry import SamplingDefaults
from batch_pipeline.generation.engine.host_protocol import HostResult
from batch_pipeline.generation.engine.interface import StreamingEngine
from batch_pipeline.generation.feed import request_key
from batch_pipeline.protocol.answers import EngineRequest, EngineResult

_SCHEMA = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, result TEXT NOT NULL, stored_at REAL NOT NULL)"
_SUFFIX = ".sqlite3"
_SIDE_FILES = ("-wal", "-shm")
# Answers written per transaction: what a crash can lose from the cache (never from the batch's chunks).
_WRITE_BATCH = 100
_DAY_SECONDS = 86400.0
_BUSY_TIMEOUT_MS = 30_000


class ResultCache:
    """One engine's stored answers. A database error (disk full, a damaged file) never fails the run:
    the cache records it in `failure` and answers nothing more, the engine generates instead."""

    def __init__(self, db: sqlite3.Connection | None, failure: str | None = None):
        self._db = db
        self._pending: list[tuple[str, str, float]] = []
        self.failure = failure

    def _failed(self, exc: sqlite3.Error) -> None:
        self.failure, self._db = f"{type(exc).__name__}: {exc}", None
        self._pending.clear()

    def get(self, key: str, request: EngineRequest) -> EngineResult | None:
        if self._db is None:
            return None
        try:
            row = self._db.execute("SELECT result FROM answers WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return None
        if row is None:
            return None
        try:
            stored = HostResult.model_validate_json(row[0])
        except ValidationError:
            return None  # stored by another version: generated again, and replaced
        return replace(stored.engine_result(request), reused="result_cache")

    def put(self, key: str, result: EngineResult) -> None:
        if self._db is None or result.error is not None:
            return
        self._pending.append((key, HostResult.of(result).model_dump_json(), time.time()))
        if len(self._pending) >= _WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._db is None or not self._pending:
            return
        try:
            with _transaction(self._db):
                self._db.executemany("INSERT OR REPLACE INTO answers (key, result, stored_at) VALUES (?, ?, ?)",
                                     self._pending)
        except sqlite3.Error as exc:
            self._failed(exc)
        self._pending.clear()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _remove_unused_files(folder: Path, cutoff: float) -> None:
    """Files of fingerprints no run wrote to since `cutoff` (an old registry entry, replaced weights):
    every entry in them is past the retention anyway."""
    for path in folder.glob(f"*{_SUFFIX}"):
        files = [path, *(path.with_name(path.name + side) for side in _SIDE_FILES)]
        try:
            if max(file.stat().st_mtime for file in files if file.exists()) < cutoff:
                for file in files:
                    file.unlink(missing_ok=True)
        except (ValueError, FileNotFoundError):
            continue  # removed meanwhile by another run's sweep


@dataclass(frozen=True)
class ResultCacheFile:
    """Where one engine's answers live, and how long they are kept."""

    folder: Path
    fingerprint: str
    retention_days: float

    @property
    def path(self) -> Path:
        return self.folder / f"{self.fingerprint}{_SUFFIX}"

    @contextlib.contextmanager
    def open(self) -> Iterator[ResultCache]:
        """The cache, its expired entries dropped; what was put is written when the block ends, however
        it ends. Several runs (other cells on the same engine) may hold it open at once: SQLite's WAL
        mode lets them read while one writes, and each write is one short transaction."""
        cutoff = time.time() - self.retention_days * _DAY_SECONDS
        db = None
        try:
            private_folder(self.folder)
            _remove_unused_files(self.folder, cutoff)
            db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            with _transaction(db):
                db.execute("DELETE FROM answers WHERE stored_at < ?", (cutoff,))
            cache = ResultCache(db)
        except (sqlite3.Error, OSError) as exc:
            cache = ResultCache(None, failure=f"{self.path}: {type(exc).__name__}: {exc}")
        try:
            yield cache
        finally:
            cache.flush()
            if db is not None:
                db.close()


class CachingEngine(StreamingEngine):
    """Answers the requests the cache holds without the engine behind it, and stores what that engine
    answers. With no engine (None) it answers only what the cache holds and skips the rest: the pass a
    run makes before it loads an engine, so a batch the cache fully answers never loads one."""

    def __init__(self, engine: StreamingEngine | None, defaults: SamplingDefaults, cache_file: ResultCacheFile):
        self.engine, self.defaults, self.cache_file = engine, defaults, cache_file
        self.answered_from_cache = 0
        self.failure: str | None = None

    def stream(self, requests: Iterator[EngineRequest], max_in_flight: int) -> Iterator[EngineResult]:
        # Opened here, so the connection lives in the thread that reads the results (generation.watchdog).
        with self.cache_file.open() as cache:
            try:
                yield from self._stream(cache, iter(requests), max_in_flight)
            finally:
                self.failure = cache.failure

    def _stream(self, cache: ResultCache, requests: Iterator[EngineRequest],
                max_in_flight: int) -> Iterator[EngineResult]:
        to_store: dict[int, str] = {}  # row_index of a deterministic request sent to the engine -> its key
        hits: deque[EngineResult] = deque()

        def lookup(request: EngineRequest) -> EngineResult | None:
            key = request_key(request, self.defaults)
            found = cache.get(key, request) if key is not None else None
            if found is None and key is not None and self.engine is not None:
                to_store[request.row_index] = key
            return found

        def misses() -> Iterator[EngineRequest]:
            """What the engine gets; ends once `max_in_flight` hits wait to be handed on, so memory stays
            bounded however many follow (the engine finishes what it holds, then a new stream starts)."""
            for request in requests:
                if (found := lookup(request)) is None:
                    yield request
                    continue
                hits.append(found)
                if len(hits) >= max_in_flight:
                    return

        def handed_on() -> Iterator[EngineResult]:
            while hits:
                self.answered_from_cache += 1
                yield hits.popleft()

        while True:
            # Hits go straight out; an engine stream starts only for a request the cache lacks.
            for request in requests:
                if (found := lookup(request)) is None:
                    if self.engine is not None:
                        break
                    continue
                self.answered_from_cache += 1
                yield found
            else:
                return
            for result in self.engine.stream(chain([request], misses()), max_in_flight):
                key = to_store.pop(result.request.row_index, None)
                if key is not None and result.reused is None:
                    cache.put(key, result)
                yield result
                yield from handed_on()
            yield from handed_on()
