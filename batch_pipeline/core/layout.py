"""Where everything lives under the data folder. Accepted inputs are never modified afterwards."""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from batch_pipeline.core.registry import REGISTRY_FILE
from batch_pipeline.core.slots import GpuSlot

_UNSAFE = re.compile(r"[^a-z0-9_-]+")
_HASH_CHARS = 10


def dataset_key(file_name: str, content_sha256: str) -> str:
    """Same name and bytes give the same key; partition keys allow only a safe alphabet."""
    stem = file_name.removesuffix(".jsonl")
    slug = _UNSAFE.sub("-", stem.lower()).strip("-")[:48] or "batch"
    return f"{slug}-{content_sha256[:_HASH_CHARS]}"


def key_hash(key: str) -> str:
    """The hash characters `dataset_key` ended the key with."""
    return key.rpartition("-")[2]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class DatasetPaths:
    folder: Path

    @property
    def input(self) -> Path:
        return self.folder / "input.jsonl"

    @property
    def requests(self) -> Path:
        return self.folder / "requests.parquet"

    @property
    def validation(self) -> Path:
        return self.folder / "validation.json"

    @property
    def source(self) -> Path:
        return self.folder / "source.json"

    @property
    def comparison(self) -> Path:
        """Every model's answer to each request, side by side."""
        return self.folder / "comparison" / "side_by_side.parquet"

    @property
    def comparison_chart(self) -> Path:
        return self.folder / "comparison" / "chart.png"

    @property
    def review_export(self) -> Path:
        """Rewritten whenever the comparison changes: review a copy, never this file."""
        return self.folder / "review" / "export.parquet"

    @property
    def review_export_csv(self) -> Path:
        return self.folder / "review" / "export.csv"

    @property
    def reviewed(self) -> Path:
        """The last accepted review, placed by `batch-pipeline curate` after it validated."""
        return self.folder / "review" / "reviewed.parquet"

    @property
    def curated(self) -> Path:
        return self.folder / "curated" / "curated.parquet"

    @property
    def finetune(self) -> Path:
        return self.folder / "curated" / "finetune.jsonl"


@dataclass(frozen=True)
class ResponsePaths:
    folder: Path

    @property
    def chunks(self) -> Path:
        return self.folder / "chunks"

    @property
    def output(self) -> Path:
        return self.folder / "output.jsonl"

    @property
    def errors(self) -> Path:
        return self.folder / "errors.jsonl"

    @property
    def manifest(self) -> Path:
        """The engine the cell's answers came from (generation.manifest), recorded before generating."""
        return self.folder / "manifest.json"

    @property
    def quality(self) -> Path:
        """The answers' quality checks (generation.quality), kept for curation to read."""
        return self.folder / "quality.json"

    @property
    def stop_request(self) -> Path:
        """Names the run someone (a cancelled or expired batch) wants stopped: core.stop_request."""
        return self.folder / "STOP"

    @property
    def suspects(self) -> Path:
        """Requests in flight when the engine itself failed: generation.engine.isolation."""
        return self.folder / "suspects.json"


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def rejected(self) -> Path:
        return self.inbox / "rejected"

    @property
    def outbox(self) -> Path:
        """An inbox batch's outcome under its own file name: its output and error files, or why it failed."""
        return self.root / "outbox"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def registry(self) -> Path:
        return self.root / REGISTRY_FILE

    @property
    def shim(self) -> Path:
        return self.root / "shim"

    @property
    def shim_database(self) -> Path:
        """The API's own records (files, batches, webhook outbox) when they are in SQLite, the default
        (api.store_engine); shared by the API server and its sensors."""
        return self.shim / "shim.sqlite3"

    @property
    def shim_files(self) -> Path:
        return self.shim / "files"

    @property
    def engine_server(self) -> Path:
        """State, lease and log of the engine host kept alive between runs (the only one unless
        `BATCH_PIPELINE_GPU_SLOTS` configures slots)."""
        return self.root / "engine"

    @property
    def result_cache(self) -> Path:
        """Deterministic answers kept across batches, one SQLite file per engine fingerprint."""
        return self.root / "result_cache"

    @property
    def trash(self) -> Path:
        """Folders retention is deleting: moved here in one rename first, so nothing reads half of one."""
        return self.root / "trash"

    def engine_slot(self, slot: GpuSlot) -> Path:
        """Each configured slot keeps its own engine host (state, lease, log, slot lock); the
        unconfigured slot keeps today's files, so a host started before slots existed is still found."""
        return self.engine_server / f"slot-{slot.index}" if slot.configured else self.engine_server

    def dataset(self, key: str) -> DatasetPaths:
        return DatasetPaths(self.datasets / key)

    def responses(self, dataset: str, model: str) -> ResponsePaths:
        return ResponsePaths(self.datasets / dataset / "responses" / model)
