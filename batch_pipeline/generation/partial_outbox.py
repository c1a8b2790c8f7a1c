"""`data/outbox/<name>.partial.jsonl`: an inbox batch's answer lines so far, as its final files will hold
them, written by its run at every chunk; the outbox sensor removes it once the final files are out."""

import shutil
from pathlib import Path

import pyarrow as pa

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.storage import atomic_path
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import CellLines
from batch_pipeline.intake.outbox import outbox_names


class PartialOutbox:
    """One run's partial file. The cell's lines only grow at their end (CellLines), so each refresh copies
    the lines already written and appends the new chunks' lines: a chunk's answers are read once."""

    def __init__(self, chunks: ChunkStore, target: Path):
        self.chunks, self.target = chunks, target
        self._known: dict[Path, pa.Table] = {}
        self._written = 0  # lines in `target`; the first refresh writes every line (an earlier run's file may differ)

    @classmethod
    def of(cls, layout: DataLayout, dataset: str, model: str) -> "PartialOutbox | None":
        """None for the API's datasets: their clients read `GET /v1/batches/{id}/partial_output`."""
        names = outbox_names(layout, dataset)
        return cls(ChunkStore(layout.responses(dataset, model).chunks), names.partial) if names else None

    def refresh(self) -> None:
        cell = CellLines(self.chunks, growing=True, known=self._known)
        kept = self._written if self._written <= cell.count and self.target.exists() else 0
        with atomic_path(self.target) as temp:
            if kept:
                shutil.copyfile(self.target, temp)
            with temp.open("a", encoding="utf-8") as out:
                out.writelines(line.model_dump_json() + "\n" for line in cell.lines(after=kept))
        self._written = cell.count
