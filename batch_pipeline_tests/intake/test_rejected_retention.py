"""Refused inbox files age out with their notes, counted from the refusal, not from the file's own time."""

import logging
import time

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.intake.inbox import sweep_inbox
from batch_pipeline.intake.rejected_retention import purge_rejected
from batch_pipeline_tests.support.aging import age

LOG = logging.getLogger("test")


def _reject(layout: DataLayout, name: str) -> None:
    layout.inbox.mkdir(parents=True, exist_ok=True)
    (layout.inbox / name).write_bytes(b"")  # empty: refused
    sweep_inbox(layout, max_bytes=1000, settle_seconds=0)


def test_old_rejections_go_with_their_notes_and_fresh_ones_stay(tmp_path, caplog):
    layout = DataLayout(tmp_path)
    for name in ("old.jsonl", "fresh.jsonl", "written-long-ago.jsonl"):
        _reject(layout, name)
    rejected = layout.rejected
    assert sorted(p.name for p in rejected.iterdir()) == [
        "fresh.jsonl", "fresh.jsonl.error.txt", "old.jsonl", "old.jsonl.error.txt",
        "written-long-ago.jsonl", "written-long-ago.jsonl.error.txt"]
    age(rejected / "old.jsonl", 40)
    age(rejected / "old.jsonl.error.txt", 31)
    age(rejected / "written-long-ago.jsonl", 400)  # its writer's time; refused today (its note says so)
    (rejected / "orphan.error.txt").touch()  # its file was taken away by hand
    age(rejected / "orphan.error.txt", 31)

    with caplog.at_level(logging.INFO):
        removed = purge_rejected(layout, 30, time.time(), LOG)

    assert sorted(p.name for p in removed) == ["old.jsonl", "old.jsonl.error.txt", "orphan.error.txt"]
    assert sorted(p.name for p in rejected.iterdir()) == [
        "fresh.jsonl", "fresh.jsonl.error.txt", "written-long-ago.jsonl", "written-long-ago.jsonl.error.txt"]
    assert f"retention: removed rejected file {rejected / 'old.jsonl'}" in caplog.text


def test_zero_days_keeps_every_rejection(tmp_path):
    layout = DataLayout(tmp_path)
    _reject(layout, "old.jsonl")
    for path in layout.rejected.iterdir():
        age(path, 4000)
    assert purge_rejected(layout, 0, time.time(), LOG) == []
    assert len(list(layout.rejected.iterdir())) == 2

