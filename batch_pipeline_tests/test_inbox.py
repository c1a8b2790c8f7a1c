import os
import time

from batch_pipeline.core.layout import DataLayout, dataset_key, file_sha256
from batch_pipeline.intake.inbox import accepted_datasets, sweep_inbox
from batch_pipeline_tests.conftest import write_batch


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
