"""Prometheus metrics, computed from the shim's records and the GPU queue at each scrape."""

import time

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from batch_pipeline.api.models import BatchStatus


def render_metrics(service) -> str:
    registry = CollectorRegistry()
    by_status = Gauge("batch_pipeline_batches", "Batches by status", ["status"], registry=registry)
    for status in BatchStatus.__args__:
        by_status.labels(status).set(0)
    for status, count in service.store.status_counts().items():
        by_status.labels(status).set(count)
    totals = service.store.totals()
    Gauge("batch_pipeline_rows_processed", "Requests finished (succeeded or failed) across batches",
          registry=registry).set(totals["rows"])
    tokens = Gauge("batch_pipeline_tokens_processed", "Tokens across batches", ["kind"], registry=registry)
    tokens.labels("input").set(totals["input_tokens"])
    tokens.labels("output").set(totals["output_tokens"])
    queue = service.queue()
    Gauge("batch_pipeline_queue_depth", "GPU runs waiting for the GPU", registry=registry).set(
        sum(1 for entry in queue if entry.status == "queued"))
    rate = Gauge("batch_pipeline_rows_per_second", "Rows per second of the running GPU run (resumed rows included)",
                 registry=registry)
    running = [entry for entry in queue if entry.status == "running"]
    if running:
        record = service.instance.get_run_record_by_id(running[0].run_id)
        if record and record.start_time:
            rate.set(running[0].rows_done / max(time.time() - record.start_time, 1e-6))
    return generate_latest(registry).decode()
