"""`batch-pipeline submit FILE`: uploads a batch input file through the OpenAI-compatible API, as any
OpenAI Batch client would, and with `--wait` follows it to the end with a progress bar, then saves
its output and error files."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from batch_pipeline.cli import shim_arguments
from batch_pipeline.cli.progress import progress_line
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.settings import Settings
from batch_pipeline.tools.cli import ToolError

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

TERMINAL = {"completed", "failed", "cancelled", "expired"}


def register(commands) -> None:
    parser = commands.add_parser("submit", help="submit a batch file through the API (--wait: follow it)",
                                 description=__doc__)
    parser.add_argument("file", type=Path, help="a JSONL file in the OpenAI batch input format")
    parser.add_argument("--model", help="run every line on this registered model instead of the file's")
    parser.add_argument("--endpoint", help="the batch's endpoint (default: the url of the file's first line)")
    parser.add_argument("--wait", action="store_true", help="show progress until the batch ends, then save its files")
    parser.add_argument("--output-dir", type=Path,
                        help="where --wait saves NAME.output.jsonl / NAME.errors.jsonl (default: the data folder's outbox/)")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="how often --wait asks for the status")
    shim_arguments.add_arguments(parser)
    parser.set_defaults(run=run)


def _lines(path: Path):
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def _line_object(path: Path, number: int, raw: bytes) -> dict:
    try:
        line = json.loads(raw)
    except ValueError as exc:
        raise ToolError(f"{path}, line {number}: not valid JSON ({exc})") from None
    if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
        raise ToolError(f"{path}, line {number}: not a batch request line (an object with a `body` object)")
    return line


def endpoint_of(path: Path) -> str:
    for number, raw in _lines(path):
        url = _line_object(path, number, raw).get("url")
        if not isinstance(url, str):
            raise ToolError(f"{path}, line {number}: no `url`; give --endpoint")
        return url
    raise ToolError(f"{path}: the file has no requests")


def with_model(path: Path, model: str, target: IO[bytes]) -> None:
    """The file with every line's `body.model` set to `model` (the original is not changed)."""
    for number, raw in _lines(path):
        line = _line_object(path, number, raw)
        line["body"]["model"] = model
        target.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
    target.flush()
    target.seek(0)


def _follow(client: OpenAI, batch: Batch, poll_seconds: float) -> Batch:
    started, shown, live = time.monotonic(), None, sys.stderr.isatty()
    while True:
        counts = batch.request_counts
        line = progress_line(batch.status, counts.completed if counts else 0, counts.failed if counts else 0,
                             counts.total if counts else 0, time.monotonic() - started)
        if live:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif line.rsplit("  ", 1)[0] != shown:  # a log, not a terminal: one line per change
            print(line, file=sys.stderr, flush=True)
            shown = line.rsplit("  ", 1)[0]
        if batch.status in TERMINAL:
            if live:
                print(file=sys.stderr)
            return batch
        time.sleep(poll_seconds)
        batch = client.batches.retrieve(batch.id)


def _save(client: OpenAI, file_id: str | None, target: Path) -> Path | None:
    if file_id is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    client.files.content(file_id).write_to_file(target)
    return target


def run(settings: Settings, args: argparse.Namespace) -> int:
    from openai import APIConnectionError, APIStatusError  # the client takes a second to import

    from batch_pipeline.cli import shim

    path: Path = args.file
    if not path.is_file():
        raise ToolError(f"{path}: file not found")
    endpoint = args.endpoint or endpoint_of(path)
    client, url = shim.client(settings, args), shim.base_url(settings, args)
    try:
        with tempfile.TemporaryFile() as rewritten, path.open("rb") as original:
            if args.model:
                with_model(path, args.model, rewritten)
            upload = client.files.create(file=(path.name, rewritten if args.model else original), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h",
                                      metadata={"submitted_file": path.name[:512]})
        print(f"submitted {path} as batch {batch.id} ({endpoint})", flush=True)
        if not args.wait:
            print(f"follow it with: batch-pipeline status {batch.id}")
            return 0
        batch = _follow(client, batch, args.poll_seconds)
        folder = args.output_dir or DataLayout(settings.data_dir).outbox
        stem = path.name.removesuffix(".jsonl")
        output = _save(client, batch.output_file_id, folder / f"{stem}.output.jsonl")
        errors = _save(client, batch.error_file_id, folder / f"{stem}.errors.jsonl")
    except APIConnectionError as exc:
        raise shim.not_answering(url, exc) from None
    except APIStatusError as exc:
        raise ToolError(f"the API refused it ({exc.status_code}): {exc.message}") from None
    print(f"batch {batch.id}: {batch.status}")
    for error in (batch.errors.data if batch.errors and batch.errors.data else [])[:20]:
        print(f"  line {error.line}: [{error.code}] {error.message}" if error.line else f"  [{error.code}] {error.message}")
    if output:
        print(f"output: {output}")
    if errors and errors.stat().st_size:
        print(f"errors: {errors}")
    return 0 if batch.status == "completed" else 1
