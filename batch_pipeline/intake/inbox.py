"""Takes finished files out of the inbox: accepted ones into their dataset folder, others aside.

A file is finished once it ends in `.jsonl` (write `name.jsonl.part`, then rename) and its size
and modification time have not changed for the settle time.
"""

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from batch_pipeline.core.layout import DataLayout, dataset_key, file_sha256
from batch_pipeline.core.storage import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class InboxOutcome:
    file_name: str
    dataset: str | None = None
    rejected_because: str | None = None


def _is_settled(path: Path, settle_seconds: float, now: float) -> bool:
    return now - path.stat().st_mtime >= settle_seconds


def _unused_name(folder: Path, name: str) -> Path:
    candidate = folder / name
    stamp = time.strftime("%Y%m%dT%H%M%S")
    counter = 0
    while candidate.exists() or candidate.with_name(candidate.name + ".error.txt").exists():
        counter += 1
        candidate = folder / f"{stamp}-{counter}-{name}"
    return candidate


def _reject(layout: DataLayout, path: Path, reason: str) -> InboxOutcome:
    layout.rejected.mkdir(parents=True, exist_ok=True)
    target = _unused_name(layout.rejected, path.name)
    write_text_atomic(target.with_name(target.name + ".error.txt"),
                      f"{path.name} was not accepted: {reason}\n")
    os.replace(path, target)
    return InboxOutcome(path.name, rejected_because=reason)


def _accept_or_reject(layout: DataLayout, path: Path, max_bytes: int) -> InboxOutcome:
    size = path.stat().st_size
    if size == 0:
        return _reject(layout, path, "the file is empty")
    if size > max_bytes:
        return _reject(layout, path, f"the file is {size} bytes; the limit is {max_bytes} bytes")
    key = dataset_key(path.name, file_sha256(path))
    dataset = layout.dataset(key)
    if dataset.input.exists():
        return _reject(layout, path, f"the same file was already accepted as dataset '{key}' "
                                     f"(results under {dataset.folder}); rename it to run it again")
    dataset.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dataset.source,
                      {"file_name": path.name, "bytes": size, "accepted_at": time.time(), "source": "inbox"})
    os.replace(path, dataset.input)
    return InboxOutcome(path.name, dataset=key)


def sweep_inbox(layout: DataLayout, max_bytes: int, settle_seconds: float) -> list[InboxOutcome]:
    if not layout.inbox.exists():
        return []
    now = time.time()
    return [
        _accept_or_reject(layout, path, max_bytes)
        for path in sorted(layout.inbox.glob("*.jsonl"))
        if path.is_file() and _is_settled(path, settle_seconds, now)
    ]


def accepted_datasets(layout: DataLayout) -> list[str]:
    """Every dataset whose input is in place, whoever put it there."""
    if not layout.datasets.exists():
        return []
    return sorted(folder.name for folder in layout.datasets.iterdir() if (folder / "input.jsonl").exists())



def dataset_source(layout: DataLayout, dataset: str) -> str:
    """`inbox` or `shim`: who accepted the dataset's input."""
    source = layout.dataset(dataset).source
    return json.loads(source.read_text()).get("source", "inbox") if source.exists() else "inbox"
