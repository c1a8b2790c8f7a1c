import errno
import os
import time

from batch_pipeline.core.layout import DataLayout, dataset_key, file_sha256
from batch_pipeline.intake import inbox
from batch_pipeline.intake.inbox import accepted_datasets, sweep_inbox
from batch_pipeline.intake.provenance import read_source
from batch_pipeline_tests.support.batches import fail_renames_of, write_batch


def _layout(tmp_path):
    layout = DataLayout(tmp_path / "data")
    layout.inbox.mkdir(parents=True)
    return layout


def test_accepted_file_moves_unchanged_into_its_dataset(tmp_path):
    layout = _layout(tmp_path)
    path = write_batch(layout.inbox / "My Batch.jsonl", 3)
    original = path.read_bytes()
    [outcome] = sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)
    assert outcome.dataset == dataset_key("My Batch.jsonl", file_sha256(layout.dataset(outcome.dataset).input))
    assert outcome.dataset.startswith("my-batch-")
    assert layout.dataset(outcome.dataset).input.read_bytes() == original
    assert not path.exists()
    assert accepted_datasets(layout) == [outcome.dataset]


def test_partial_and_unsettled_files_wait(tmp_path):
    layout = _layout(tmp_path)
    write_batch(layout.inbox / "upload.jsonl.part", 3)
    fresh = write_batch(layout.inbox / "fresh.jsonl", 3)
    assert sweep_inbox(layout, max_bytes=10**6, settle_seconds=60) == []
    old = time.time() - 120
    os.utime(fresh, (old, old))
    assert [o.file_name for o in sweep_inbox(layout, max_bytes=10**6, settle_seconds=60)] == ["fresh.jsonl"]
    assert (layout.inbox / "upload.jsonl.part").exists()


def test_unacceptable_files_go_aside_with_a_readable_reason(tmp_path):
    layout = _layout(tmp_path)
    (layout.inbox / "empty.jsonl").write_bytes(b"")
    big = write_batch(layout.inbox / "big.jsonl", 50)
    big_bytes = big.read_bytes()
    outcomes = {o.file_name: o for o in sweep_inbox(layout, max_bytes=1000, settle_seconds=0)}
    assert "empty" in outcomes["empty.jsonl"].rejected_because
    assert "limit is 1000 bytes" in outcomes["big.jsonl"].rejected_because
    assert (layout.rejected / "big.jsonl").read_bytes() == big_bytes
    assert "big.jsonl was not accepted" in (layout.rejected / "big.jsonl.error.txt").read_text()
    assert accepted_datasets(layout) == []


def test_the_same_file_twice_is_accepted_once(tmp_path):
    layout = _layout(tmp_path)
    write_batch(layout.inbox / "a.jsonl", 3)
    [first] = sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)
    write_batch(layout.inbox / "a.jsonl", 3)
    [second] = sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)
    assert first.dataset and second.rejected_because and first.dataset in second.rejected_because
    write_batch(layout.inbox / "a.jsonl", 3)
    sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)
    assert len(list(layout.rejected.glob("*a.jsonl"))) == 2
    assert accepted_datasets(layout) == [first.dataset]


def test_a_file_its_writer_still_holds_open_waits_however_old_it_looks(tmp_path):
    layout = _layout(tmp_path)
    path = write_batch(layout.inbox / "slow.jsonl", 3)
    with path.open("a"):  # a writer that paused for longer than the settle time
        old = time.time() - 120
        os.utime(path, (old, old))
        assert sweep_inbox(layout, max_bytes=10**6, settle_seconds=60) == []
        assert path.exists() and accepted_datasets(layout) == []
    [outcome] = sweep_inbox(layout, max_bytes=10**6, settle_seconds=60)
    assert outcome.dataset and not path.exists()


def test_without_leases_the_settle_time_alone_decides(tmp_path, monkeypatch):
    def no_leases(fd, command, arg=0):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(inbox.fcntl, "fcntl", no_leases)
    layout = _layout(tmp_path)
    path = write_batch(layout.inbox / "slow.jsonl", 3)
    with path.open("a"):
        assert sweep_inbox(layout, max_bytes=10**6, settle_seconds=60) == []
        old = time.time() - 120
        os.utime(path, (old, old))
        [outcome] = sweep_inbox(layout, max_bytes=10**6, settle_seconds=60)
    assert outcome.dataset


def test_acceptance_records_the_whole_hash_of_the_input(tmp_path):
    layout = _layout(tmp_path)
    write_batch(layout.inbox / "a.jsonl", 3)
    [outcome] = sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)
    record = read_source(layout, outcome.dataset)
    assert (record.source, record.file_name) == ("inbox", "a.jsonl")
    assert record.sha256 == file_sha256(layout.dataset(outcome.dataset).input)


def _three_files(layout: DataLayout) -> None:
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        write_batch(layout.inbox / name, 3)


def test_a_file_that_cannot_be_moved_is_noted_beside_itself_and_holds_up_no_other(tmp_path, monkeypatch):
    layout = _layout(tmp_path)
    _three_files(layout)
    fail_renames_of(monkeypatch, "b.jsonl")
    outcomes = {o.file_name: o for o in sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)}
    assert outcomes["a.jsonl"].dataset and outcomes["c.jsonl"].dataset
    assert "cross-device" in outcomes["b.jsonl"].failed_because and not outcomes["b.jsonl"].dataset
    note = layout.inbox / "b.jsonl.error.txt"
    assert "same filesystem" in note.read_text() and (layout.inbox / "b.jsonl").exists()
    sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)
    assert note.read_text().count("could not be taken in") == 1  # replaced, not appended to

    monkeypatch.undo()
    [outcome] = sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)
    assert outcome.dataset and not note.exists()
    assert len(accepted_datasets(layout)) == 3


def test_a_file_that_vanishes_or_cannot_be_read_holds_up_no_other(tmp_path, monkeypatch):
    layout = _layout(tmp_path)
    _three_files(layout)
    (layout.inbox / "d.jsonl").write_bytes(b"")
    (layout.inbox / "d.jsonl.error.txt").write_text("an earlier failure\n")
    real_probe, real_hash = inbox._held_open_for_writing, inbox.file_sha256

    def taken_away_meanwhile(path):
        if path.name == "a.jsonl":
            path.unlink()
        return real_probe(path)

    def unreadable(path):
        if path.name == "c.jsonl":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_hash(path)

    monkeypatch.setattr(inbox, "_held_open_for_writing", taken_away_meanwhile)
    monkeypatch.setattr(inbox, "file_sha256", unreadable)
    outcomes = {o.file_name: o for o in sweep_inbox(layout, max_bytes=10**6, settle_seconds=0)}
    assert outcomes["b.jsonl"].dataset
    assert outcomes["a.jsonl"].failed_because and not (layout.inbox / "a.jsonl.error.txt").exists()
    assert "read the file" in (layout.inbox / "c.jsonl.error.txt").read_text()
    assert outcomes["d.jsonl"].rejected_because and not (layout.inbox / "d.jsonl.error.txt").exists()
