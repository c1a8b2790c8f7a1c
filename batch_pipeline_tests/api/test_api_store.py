"""The API's store on SQLite and on a real PostgreSQL: migrations, the copy between them, and what
keeps API replicas apart (batch locks across processes, webhook claims, file deletion vs. new batches)."""

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from batch_pipeline.api.batch_locks import ADVISORY_LOCK_CLASS
from batch_pipeline.api.models import BatchObject, FileObject, WebhookEvent, WebhookEventData
from batch_pipeline.api.store import ShimStore
from batch_pipeline.api.store_migrations import MIGRATIONS

# The schema every store had before migrations existed (the old store.py's, verbatim).
_UNVERSIONED_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, path TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, dataset TEXT NOT NULL,
    status TEXT NOT NULL, input_file_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);
CREATE INDEX IF NOT EXISTS batches_by_dataset ON batches (dataset);
CREATE TABLE IF NOT EXISTS batch_output_retention (batch_id TEXT PRIMARY KEY, seconds INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, batch_id TEXT NOT NULL, type TEXT NOT NULL,
    body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    delivered_at REAL, gave_up_at REAL, last_error TEXT, last_attempt_at REAL, UNIQUE (batch_id, type));
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (delivered_at, gave_up_at, next_attempt_at);
"""


def _file(file_id: str, expires_at: int | None = None) -> FileObject:
    return FileObject(id=file_id, bytes=3, created_at=1, filename="in.jsonl", purpose="batch", expires_at=expires_at)


def _batch(batch_id: str, input_file_id: str, status: str = "validating", **fields) -> BatchObject:
    return BatchObject(id=batch_id, endpoint="/v1/chat/completions", input_file_id=input_file_id,
                       completion_window="24h", status=status, created_at=1, **fields)


def _event(batch_id: str, event_id: str) -> WebhookEvent:
    return WebhookEvent(id=event_id, type="batch.cancelled", created_at=2, data=WebhookEventData(id=batch_id))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'shim.sqlite3'}"


def _revisions(store: ShimStore) -> tuple[str, str]:
    """(the store's revision, the newest shipped)."""
    with store.engine.connect() as db:
        current = MigrationContext.configure(db).get_current_revision()
    return current, ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _unversioned_store(path) -> None:
    """A store as the previous release left it: old tables, one file, one finished batch, no version."""
    db = sqlite3.connect(path)
    db.executescript(_UNVERSIONED_SCHEMA)
    db.execute("INSERT INTO files (id, path, body) VALUES (?, ?, ?)",
               ("file-old", "/data/shim/files/file-old.jsonl", _file("file-old", expires_at=500).model_dump_json()))
    batch = _batch("batch_old", "file-old", status="completed", output_file_id="file-out")
    db.execute("INSERT INTO batches (id, dataset, status, input_file_id, body) VALUES (?, ?, ?, ?, ?)",
               (batch.id, "d-1", batch.status, batch.input_file_id, batch.model_dump_json()))
    db.execute("INSERT INTO webhook_events (id, batch_id, type, body, next_attempt_at, delivered_at) "
               "VALUES ('evt_old', 'batch_old', 'batch.completed', '{}', 0, 5)")
    db.commit()
    db.close()


def test_a_store_from_before_migrations_is_adopted_and_upgraded(tmp_path):
    path = tmp_path / "shim.sqlite3"
    _unversioned_store(path)
    store = ShimStore(f"sqlite:///{path}")
    current, newest = _revisions(store)
    assert current == newest == "0002"
    # The columns queries now filter on were filled from the records' JSON.
    assert store.expired_files(now=499) == [] and [i for i, _ in store.expired_files(now=500)] == ["file-old"]
    assert [f.id for f in store.files("batch", 10, None, now=0)] == ["file-old"]
    assert store.delete_unused_file("file-out")  # used only by a finished batch
    assert store.batch("batch_old")[0].status == "completed"
    assert store.claim_webhook_event(now=10, lease_seconds=60) is None  # delivered before the upgrade
    ShimStore(f"sqlite:///{path}")  # opening again finds nothing to do


def test_records_round_trip_on_either_database(store_url):
    store = ShimStore(store_url)
    tmp = Path("/data/a.jsonl")
    store.put_file(_file("file-a"), tmp)
    store.put_file(_file("file-a", expires_at=100), tmp)  # replaced, not added
    assert store.file("file-a")[0].expires_at == 100
    assert not store.add_batch(_batch("batch_1", "file-a"), "d-1", now=100)  # its input expired
    store.put_file(_file("file-b"), tmp)
    assert store.add_batch(_batch("batch_1", "file-b"), "d-1", now=100, output_expires_after=3600)
    assert store.add_batch(_batch("batch_2", "file-b"), "d-1", now=100)
    assert not store.delete_unused_file("file-b")  # two unfinished batches read it
    event = _event("batch_1", "evt_1")
    store.save_batch(_batch("batch_1", "file-b", status="cancelled"), event=event)
    store.save_batch(_batch("batch_1", "file-b", status="cancelled"), event=_event("batch_1", "evt_again"))
    assert [row["id"] for row in store.webhook_events("batch_1")] == ["evt_1"]  # one per (batch, type)
    assert [b.id for b in store.batches(10, None)] == ["batch_2", "batch_1"]
    assert [b.id for b in store.batches(10, "batch_2")] == ["batch_1"]
    assert [b.id for b, _ in store.active_batches("d-1")] == ["batch_2"]
    assert store.status_counts() == {"cancelled": 1, "validating": 1}
    assert store.output_expires_after("batch_1") == 3600 and store.output_expires_after("batch_2") is None
    assert store.expired_files(now=100) == [("file-a", tmp)]


def test_a_claimed_event_is_skipped_by_other_senders_until_its_lease_ends(store_url):
    first, second = ShimStore(store_url), ShimStore(store_url)
    first.put_file(_file("file-b"), Path("/x"))
    first.add_batch(_batch("batch_1", "file-b"), "d", now=0)
    first.save_batch(_batch("batch_1", "file-b", status="cancelled"), event=_event("batch_1", "evt_1"))
    assert first.claim_webhook_event(now=10, lease_seconds=30)[0] == "evt_1"
    assert second.claim_webhook_event(now=10, lease_seconds=30) is None
    assert second.claim_webhook_event(now=41, lease_seconds=30)[0] == "evt_1"  # the first sender died
    second.webhook_delivered("evt_1", now=42)
    assert first.claim_webhook_event(now=100, lease_seconds=30) is None


def test_one_process_at_a_time_holds_a_batch(postgres_url):
    """Two stores stand for two replicas: each has its own connections, as separate processes do."""
    mine, theirs = ShimStore(postgres_url), ShimStore(postgres_url)
    with mine.batch_locks.hold("batch_1") as held:
        assert held
        with mine.batch_locks.hold("batch_1") as again:  # re-entrant in the holding thread
            assert again
        with theirs.batch_locks.hold("batch_1", wait=False) as other:
            assert not other
        with theirs.batch_locks.hold("batch_2", wait=False) as unrelated:
            assert unrelated
        released = threading.Event()

        def wait_for_it():
            with theirs.batch_locks.hold("batch_1"):
                released.set()

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        assert not released.wait(0.5)
    waiter.join(timeout=30)
    assert released.is_set()
    with mine.engine.connect() as db:  # every advisory lock was given back
        held = db.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :kind "
                               "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                          {"kind": ADVISORY_LOCK_CLASS}).scalar()
        assert held == 0


def test_a_dead_holders_batch_lock_is_freed_by_the_server(postgres_url):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from batch_pipeline.api.store import ShimStore\n"
        f"locks = ShimStore({postgres_url!r}).batch_locks\n"
        "with locks.hold('batch_1'):\n    print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = ShimStore(postgres_url)
        with store.batch_locks.hold("batch_1", wait=False) as held:
            assert not held
    finally:
        holder.kill()
        holder.wait()
    with store.batch_locks.hold("batch_1") as held:  # waits at most until the server notices the exit
        assert held


def test_the_sqlite_store_moves_to_postgres_with_one_command(tmp_path, postgres_url):
    source = tmp_path / "shim.sqlite3"
    _unversioned_store(source)
    old = ShimStore(f"sqlite:///{source}")
    old.put_file(_file("file-new"), tmp_path / "new.jsonl")
    old.add_batch(_batch("batch_new", "file-new"), "d-2", now=0, output_expires_after=60)
    old.save_batch(_batch("batch_new", "file-new", status="cancelled"), event=_event("batch_new", "evt_new"))
    command = [sys.executable, "-m", "batch_pipeline.api.migrate_store", "--to", postgres_url, "--from", str(source)]

    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 files, 2 batches, 1 batch_output_retention, 2 webhook_events" in done.stdout

    store = ShimStore(postgres_url)
    assert [b.id for b in store.batches(10, None)] == ["batch_new", "batch_old"]
    assert store.file("file-new") == old.file("file-new")
    assert store.output_expires_after("batch_new") == 60
    assert [row["id"] for row in store.webhook_events("batch_new")] == ["evt_new"]
    assert store.claim_webhook_event(now=time.time(), lease_seconds=30)[0] == "evt_new"  # still owed
    assert store.claim_webhook_event(now=time.time(), lease_seconds=30) is None  # evt_old was delivered
    store.put_file(_file("file-after"), tmp_path / "after.jsonl")  # numbering goes on after the copies
    assert [f.id for f in store.files(None, 1, None, now=0)] == ["file-after"]

    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "already holds records (3 files, 2 batches" in again.stderr
    missing = subprocess.run([*command[:-1], str(tmp_path / "nope.sqlite3")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no SQLite store at" in missing.stderr
    assert "Traceback" not in again.stderr + missing.stderr
