"""Prometheus metrics, computed from the shim's records and the GPU queue at each scrape."""

import time

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from batch_pipeline.shim.models import BatchStatus


def render_metrics(service) -> str:
    registry = CollectorRegistry()
    by_status = Gauge("batch_pipeline_batches", "Batches by status", ["status"], registry=registry)
    for status in BatchStatus.__args__:
        by_status.labels(status).set(0)
    for status, count in service.store.status_counts().items():
        by_status.labels(status).set(count)
    rows = Gauge("batch_pipeline_rows_processed", "Requests finished (succeeded or failed) across batches",
                 registry=registry)
    tokens = Gauge("batch_pipeline_tokens_processed", "Tokens across batches", ["kind"], registry=registry)
    batches, _ = service.batches(limit=10_000, after=None)
    rows.set(sum(b.request_counts.completed + b.request_counts.failed for b in batches))
    tokens.labels("input").set(sum(b.usage.input_tokens for b in batches))
    tokens.labels("output").set(sum(b.usage.output_tokens for b in batches))
    queue = service.queue()
    Gauge("batch_pipeline_queue_depth", "GPU runs waiting for the GPU", registry=registry).set(
        sum(1 for entry in queue if entry["status"] == "queued"))
    rate = Gauge("batch_pipeline_rows_per_second", "Rows per second of the running GPU run", registry=registry)
    running = [entry for entry in queue if entry["status"] == "running"]
    if running:
        record = service.instance.get_run_record_by_id(running[0]["run_id"])
        started = record.start_time if record and record.start_time else None
        if started:
            rate.set(running[0]["rows_done"] / max(time.time() - started, 1e-6))
    return generate_latest(registry).decode()
