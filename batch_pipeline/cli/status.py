"""`batch-pipeline status [BATCH | DATASET]`: the GPU queue and the latest API batches; one API batch
(`batch_...`); or one dataset as its folder shows it (validation, rows on disk per model, results)."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING

from batch_pipeline.cli import shim_arguments
from batch_pipeline.cli.progress import progress_line
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.intake.inbox import accepted_datasets
from batch_pipeline.intake.outbox import outbox_names
from batch_pipeline.intake.provenance import read_source
from batch_pipeline.intake.validation import read_validation
from batch_pipeline.tools.cli import ToolError

if TYPE_CHECKING:
    from openai.types import Batch

_LISTED = 10


def register(commands) -> None:
    parser = commands.add_parser("status", help="the queue and recent batches, one batch, or one dataset",
                                 description=__doc__)
    parser.add_argument("target", nargs="?", help="a batch id (batch_...) or a dataset key (as in data/datasets/)")
    shim_arguments.add_arguments(parser)
    parser.set_defaults(run=run)


def _when(timestamp: int | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def describe_batch(batch: Batch) -> list[str]:
    counts = batch.request_counts
    lines = [f"{batch.id}  {batch.status}  model {batch.model or '-'}  created {_when(batch.created_at)}",
             "  " + progress_line(batch.status, counts.completed if counts else 0, counts.failed if counts else 0,
                                  counts.total if counts else 0, 0).rsplit("  ", 1)[0]]
    if expected := getattr(batch, "expected_completion_at", None):  # our extension field
        lines.append(f"  expected to start {_when(getattr(batch, 'expected_start_at', None))}, "
                     f"to complete {_when(expected)}")
    lines += [f"  warning: {warning}" for warning in getattr(batch, "warnings", None) or []]
    if batch.output_file_id:
        lines.append(f"  output file {batch.output_file_id}, error file {batch.error_file_id or '-'} "
                     "(client.files.content(ID), or `batch-pipeline submit --wait` saves them)")
    for error in (batch.errors.data if batch.errors and batch.errors.data else [])[:20]:
        lines.append(f"  line {error.line}: [{error.code}] {error.message}" if error.line
                     else f"  [{error.code}] {error.message}")
    return lines


def describe_dataset(layout: DataLayout, dataset: str) -> list[str]:
    paths = layout.dataset(dataset)
    if not paths.input.exists():
        known = accepted_datasets(layout)
        raise ToolError(f"no batch or dataset {dataset!r}; datasets: {', '.join(known[-20:]) or 'none yet'}")
    source, report = read_source(layout, dataset), read_validation(layout, dataset)
    origin = f"{source.source}, file {source.file_name or '-'}" if source else "origin unknown"
    lines = [f"dataset {dataset} ({origin})  {paths.folder}"]
    names = outbox_names(layout, dataset)
    if report is None:
        return [*lines, "  validation: pending (the inbox sensor or its ingest run has not finished)"]
    if not report.ok:
        note = f"; note: {names.failure}" if names and names.failure.exists() else ""
        return [*lines, f"  validation failed{note}", *("  " + line for line in report.summary().splitlines()[1:])]
    lines.append(f"  validated: {report.requests} requests for {report.model} ({report.endpoint})")
    models = sorted(folder.name for folder in (paths.folder / "responses").glob("*") if folder.is_dir())
    for model in models or [report.model]:
        responses = layout.responses(dataset, model)
        if responses.output.exists():
            lines.append(f"  {model}: done, output {responses.output}, errors {responses.errors}")
        else:
            done = ChunkStore(responses.chunks).row_count() if responses.chunks.exists() else 0
            lines.append(f"  {model}: {done}/{report.requests} rows on disk (queued or generating)")
    if names and names.output.exists():
        lines.append(f"  outbox: {names.output}")
    return lines


def _queue(settings: Settings, args: argparse.Namespace) -> list[str]:
    import httpx

    from batch_pipeline.cli import shim
    from batch_pipeline.core.loopback import direct_client, is_loopback

    url = shim.base_url(settings, args)
    key = args.api_key or settings.shim_api_key
    make = direct_client if is_loopback(url) else httpx.Client
    with make(timeout=30, headers={"Authorization": f"Bearer {key}"} if key else {}) as http:
        response = http.get(f"{url}/queue")
    response.raise_for_status()
    entries = response.json()["data"]
    lines = [f"GPU queue: {len(entries)} run(s)" if entries else "GPU queue: empty"]
    for entry in entries:
        total = entry["rows_total"] if entry["rows_total"] is not None else "?"
        lines.append(f"  {entry['position']}. {entry['status']:<7} {entry['dataset']} on {entry['model']}: "
                     f"{entry['rows_done']}/{total} rows" + (f"  ({entry['reason']})" if entry.get("reason") else ""))
        if entry.get("expected_completion_at"):
            lines.append(f"     expected start {_when(entry['expected_start_at'])}, complete "
                         f"{_when(entry['expected_completion_at'])} ({entry['eta_basis']} speed)")
    return lines


def run(settings: Settings, args: argparse.Namespace) -> int:
    import httpx
    from openai import APIConnectionError, NotFoundError  # the client takes a second to import

    from batch_pipeline.cli import shim

    layout, url = DataLayout(settings.data_dir), shim.base_url(settings, args)
    if args.target and not args.target.startswith("batch_"):
        print("\n".join(describe_dataset(layout, args.target)))
        return 0
    client = shim.client(settings, args)
    try:
        if args.target:
            print("\n".join(describe_batch(client.batches.retrieve(args.target))))
            return 0
        lines = _queue(settings, args)
        batches = client.batches.list(limit=_LISTED).data
    except NotFoundError:
        raise ToolError(f"no batch {args.target!r} at {url}") from None
    except (APIConnectionError, httpx.TransportError) as exc:
        raise shim.not_answering(url, exc) from None
    lines.append(f"latest API batches ({len(batches)}):" if batches else "no API batches yet")
    lines += [line for batch in batches for line in describe_batch(batch)[:2]]
    inbox = sorted((key for key in accepted_datasets(layout) if (source := read_source(layout, key)) is None
                    or source.source == "inbox"), key=lambda key: layout.dataset(key).folder.stat().st_mtime)[-_LISTED:]
    lines.append(f"latest inbox datasets ({len(inbox)}): " + (", ".join(inbox) or "none")
                 + "  (batch-pipeline status DATASET for one)")
    print("\n".join(lines))
    return 0
