"""The normalized requests of a dataset as Parquet, written and read in bounded batches."""

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batch_pipeline.intake.validation import RequestRow

SCHEMA = pa.schema([
    ("row_index", pa.int64()),
    ("line", pa.int64()),
    ("custom_id", pa.string()),
    ("body_json", pa.string()),
    ("url", pa.string()),
])
_WRITE_BATCH = 2000


def _to_table(rows: list[RequestRow]) -> pa.Table:
    return pa.Table.from_pylist([row.model_dump() for row in rows], schema=SCHEMA)


def write_requests(rows: Iterable[RequestRow], path: Path) -> int:
    """Writes rows as they stream in (callers write to a temp path); returns the count."""
    count = 0
    with pq.ParquetWriter(path, SCHEMA) as writer:
        pending: list[RequestRow] = []
        for row in rows:
            pending.append(row)
            if len(pending) >= _WRITE_BATCH:
                writer.write_table(_to_table(pending))
                count += len(pending)
                pending.clear()
        if pending:
            writer.write_table(_to_table(pending))
            count += len(pending)
    return count


def count_requests(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def iter_requests(path: Path, skip: set[int] = frozenset()) -> Iterator[RequestRow]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_WRITE_BATCH):
        for record in batch.to_pylist():
            if record["row_index"] not in skip:
                yield RequestRow(**record)
