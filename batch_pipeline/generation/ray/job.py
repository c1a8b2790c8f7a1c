"""A cell's generation as a Ray job, started by `generation.ray.submit` through Dagster Pipes.

Ray Data streams the cell's missing requests, in blocks of at most one chunk, to a pool of actors that
each hold our own vLLM engine, so the answers are those of a local run byte for byte (`n`,
`finish_reason`, per-request 400s). Each actor writes its block's chunk itself, atomically and named
by the block's first row: a retried block (a killed actor) replaces its own chunk, two actors never
share a name, and only a one-row receipt per chunk reaches the driver.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel

from batch_pipeline.core.registry import RayPlacement
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore
from batch_pipeline.generation.engine.environment import configure_engine_environment
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.results import result_row
from batch_pipeline.protocol.answers import EngineRequest

CELL_METADATA_KEY = "batch_pipeline_cell"


class RayCellJob(BaseModel):
    """What the driver needs; every path is on storage shared by all nodes."""

    spec: EngineSpec
    placement: RayPlacement
    requests: str
    chunks: str
    data_dir: str
    chunking: ChunkPolicy
    max_in_flight: int


class Receipt(BaseModel):
    chunk: str
    rows: int
    completion_tokens: int


class _ChunkWriter:
    """One engine replica: answers a block and writes it as one chunk."""

    def __init__(self, job_json: str):
        from batch_pipeline.generation.engine.factory import build_engine

        job = RayCellJob.model_validate_json(job_json)
        configure_engine_environment(Path(job.data_dir))
        self.engine = build_engine(job.spec)
        self.store = ChunkStore(Path(job.chunks))
        self.model, self.max_in_flight = job.spec.model, job.max_in_flight

    def __call__(self, block: pa.Table) -> pa.Table:
        requests = [EngineRequest(row["row_index"], row["custom_id"], json.loads(row["body_json"]),
                                  row["url"]) for row in block.to_pylist()]
        rows = [result_row(result, self.model) for result in self.engine.stream(iter(requests), self.max_in_flight)]
        path = self.store.write_block(min(request.row_index for request in requests), rows)
        receipt = Receipt(chunk=path.name, rows=len(rows), completion_tokens=sum(row.completion_tokens for row in rows))
        return pa.Table.from_pylist([receipt.model_dump()])


def receipts(job: RayCellJob) -> Iterator[Receipt]:
    """Generates every row not yet in a chunk; yields each chunk's receipt as it lands."""
    import ray

    ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver's log is the Pipes channel
    done = ChunkStore(Path(job.chunks)).done_rows()
    missing = ray.data.read_parquet(job.requests).filter(lambda row: row["row_index"] not in done)
    written = missing.map_batches(
        _ChunkWriter, fn_constructor_kwargs={"job_json": job.model_dump_json()}, batch_size=job.chunking.size,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=job.placement.actors),
        num_cpus=job.placement.cpus_per_actor, num_gpus=job.placement.gpus_per_actor or None)
    for row in written.iter_rows():
        yield Receipt.model_validate(row)


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        job = RayCellJob.model_validate(pipes.extras["job"])
        for receipt in receipts(job):
            pipes.log.info(f"{receipt.chunk}: {receipt.rows} rows, {receipt.completion_tokens} generated tokens")


if __name__ == "__main__":
    main()
