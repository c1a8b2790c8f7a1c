"""A finished batch's output and error files, handed back as files of the API: copied from its cell
when it completed, or written from what its chunks hold when it was cancelled or expired."""

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from batch_pipeline.api.files import FileService
from batch_pipeline.api.lifecycle import Finish
from batch_pipeline.api.models import BatchObject
from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.storage import atomic_path
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import ResponseTotals, write_output_files
from batch_pipeline.intake.requests_table import iter_requests
from batch_pipeline.protocol.batch import BatchLineError, BatchOutputLine, new_id

# The error line each request a batch never ran gets, as OpenAI writes them.
_UNFINISHED = {
    Finish.EXPIRED: BatchLineError(code="batch_expired",
                                   message="This request could not be executed before the completion window expired."),
    Finish.CANCELLED: BatchLineError(code="batch_cancelled",
                                     message="This request was not executed because the batch was cancelled."),
}
_OUTPUT_KINDS = ("output", "error")


def batch_file_id(batch_id: str, kind: str) -> str:
    """Derived from the batch id, so writing a batch's files again replaces them instead of adding more."""
    return "file-" + hashlib.sha256(f"{batch_id}/{kind}".encode()).hexdigest()[:32]


class BatchPublisher:
    def __init__(self, layout: DataLayout, store: ShimStore, files: FileService):
        self.layout, self.store, self.files = layout, store, files

    def _publish(self, batch: BatchObject, write: Callable[[Path, Path], object]) -> tuple[str | None, str | None]:
        """`write` fills the batch's output and error files, each atomically; the non-empty ones are then
        registered. Their ids come from the batch id, so a retry replaces an earlier attempt's files."""
        ids = [batch_file_id(batch.id, kind) for kind in _OUTPUT_KINDS]
        paths = [self.files.folder / f"{file_id}.jsonl" for file_id in ids]
        write(*paths)
        retention = self.store.output_expires_after(batch.id)
        published = []
        for kind, file_id, path in zip(_OUTPUT_KINDS, ids, paths):
            if path.stat().st_size == 0:
                path.unlink()
                self.store.delete_file(file_id)  # an earlier attempt may have registered it
                published.append(None)
            else:
                published.append(self.files.add(file_id, path, f"{batch.id}_{kind}.jsonl", "batch_output",
                                                 expires_after_seconds=retention).id)
        return published[0], published[1]

    def partition_files(self, batch: BatchObject, dataset: str) -> tuple[str | None, str | None]:
        source = self.layout.responses(dataset, batch.model)

        def copy(output: Path, errors: Path) -> None:
            for origin, target in ((source.output, output), (source.errors, errors)):
                with atomic_path(target) as temp:
                    shutil.copyfile(origin, temp)

        return self._publish(batch, copy)

    def partial_files(self, batch: BatchObject, dataset: str,
                      finish: Finish) -> tuple[str | None, str | None, ResponseTotals]:
        """What the chunks hold now, one snapshot for every line written, then an error line for each
        request they lack (`batch_expired` or `batch_cancelled`)."""
        store = ChunkStore(self.layout.responses(dataset, batch.model).chunks).snapshot()
        unfinished = self._unfinished_lines(dataset, store, _UNFINISHED[finish])
        written: list[ResponseTotals] = []

        def write(output: Path, errors: Path) -> None:
            written.append(write_output_files(store, output, errors, unfinished))

        output_id, error_id = self._publish(batch, write)
        return output_id, error_id, written[-1]

    def _unfinished_lines(self, dataset: str, store: ChunkStore, error: BatchLineError) -> list[BatchOutputLine]:
        requests = self.layout.dataset(dataset).requests
        if not requests.exists():
            return []
        return [BatchOutputLine(id=new_id("batch_req_"), custom_id=row.custom_id, response=None, error=error)
                for row in iter_requests(requests, skip=store.done_rows())]
