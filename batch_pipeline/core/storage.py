"""Atomic file writes: a reader (or a crash) only ever sees a complete file or none."""

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch_pipeline.core.privacy import file_mode

TEMP_MARKER = ".tmp-"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yields a temp path beside `target`; on success it is made private (core.privacy), fsynced and
    renamed over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f"{target.name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield temp
        os.chmod(temp, file_mode())
        _fsync_file(temp)
        os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json_atomic(target: Path, payload: Any) -> None:
    write_text_atomic(target, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def write_parquet_atomic(target: Path, table: pa.Table) -> None:
    with atomic_path(target) as temp:
        pq.write_table(table, temp)


def remove_temp_files(folder: Path, untouched_seconds: float = 0) -> int:
    """Deletes leftovers of writes a crash interrupted; they never hold finished data. With
    `untouched_seconds`, only those unmodified that long: another process may still be writing the rest."""
    removed = 0
    if folder.exists():
        for leftover in folder.glob(f"*{TEMP_MARKER}*"):
            try:
                if untouched_seconds and time.time() - leftover.stat().st_mtime < untouched_seconds:
                    continue
            except FileNotFoundError:
                continue
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed
