"""`GET /v1/batches/{id}/partial_output` (our extension): a batch's answer lines so far, as the lines of
its final files, each once to a client that passes the count it has read as `after`."""

import json
from collections.abc import Iterator
from itertools import islice
from typing import BinaryIO, NamedTuple

from batch_pipeline.generation.results import CellLines

# The response header with the count of lines so far: the `after` of the next call.
LINES_HEADER = "X-Batch-Lines"


class PartialOutput(NamedTuple):
    lines: int
    body: Iterator[bytes]  # JSONL, the lines after the first `after`


def running(cell: CellLines, after: int) -> PartialOutput:
    """The cell's lines so far (`cell` read as growing, so a later call's lines start with these)."""
    return PartialOutput(cell.count, (line.model_dump_json().encode() + b"\n" for line in cell.lines(after)))


def _line_id(raw: bytes) -> str:
    return json.loads(raw)["id"]


def finished(cell: CellLines, files: list[BinaryIO], after: int) -> PartialOutput:
    """Exactly the lines of the batch's output and error `files` (open, so retention cannot take them
    mid-stream), in the order the running batch showed them: the chunks' lines first, then the lines the
    chunks lack (the requests a cancel or expiry left undone). The chunks may hold more by now (a run
    another batch shares goes on); those are not this batch's."""
    final = {_line_id(raw) for handle in files for raw in handle}

    def body() -> Iterator[bytes]:
        try:
            shown = set()
            for line in cell.lines():
                if line.id in final:
                    shown.add(line.id)
                    yield line.model_dump_json().encode() + b"\n"
            for handle in files:
                handle.seek(0)
                yield from (raw for raw in handle if _line_id(raw) not in shown)
        finally:
            for handle in files:
                handle.close()

    return PartialOutput(len(final), islice(body(), after, None))
