"""Quarantined chunks are kept for inspection, then age out, counted from the quarantine itself."""

import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.quarantine_retention import purge_quarantine
from batch_pipeline_tests.support.aging import age

LOG = logging.getLogger("test")


def _store(layout: DataLayout, dataset: str) -> ChunkStore:
    return ChunkStore(layout.responses(dataset, "m").chunks)


def _quarantine_one(store: ChunkStore, number: int):
    store.folder.mkdir(parents=True, exist_ok=True)
    bad = store.folder / f"chunk-{number:05d}.parquet"
    bad.write_bytes(b"PAR1 truncated")
    age(bad, 400)  # written long ago: the quarantine, not the write, starts its time
    return store.prepare().quarantined


def test_old_quarantined_chunks_go_and_fresh_ones_and_chunks_stay(tmp_path, caplog):
    layout = DataLayout(tmp_path)
    old_cell, fresh_cell = _store(layout, "old"), _store(layout, "fresh")
    [old] = _quarantine_one(old_cell, 0)
    age(old, 31)
    [fresh] = _quarantine_one(fresh_cell, 0)
    pq.write_table(pa.table({"row_index": [0]}), old_cell.folder / "chunk-00001.parquet")
    age(old_cell.folder / "chunk-00001.parquet", 400)  # a good chunk, however old, is no quarantine's

    with caplog.at_level(logging.INFO):
        assert purge_quarantine(layout, 30, time.time(), LOG) == [old]

    assert not old_cell.quarantine.exists() and fresh.exists()
    assert (old_cell.folder / "chunk-00001.parquet").exists()
    assert f"retention: removed quarantined chunk {old}" in caplog.text


def test_zero_days_keeps_the_quarantine(tmp_path):
    layout = DataLayout(tmp_path)
    [chunk] = _quarantine_one(_store(layout, "a"), 0)
    age(chunk, 4000)
    assert purge_quarantine(layout, 0, time.time(), LOG) == [] and chunk.exists()
