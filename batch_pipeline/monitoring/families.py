"""Our Prometheus series, as pure functions of what the tally, the queue and the engine state say."""

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric

from batch_pipeline.monitoring.engine_server import SLOT_LABEL, EngineHost
from batch_pipeline.monitoring.queue_state import QueueState
from batch_pipeline.monitoring.results import ResultsTally

PREFIX = "batch_pipeline_"


def result_families(tally: ResultsTally) -> Iterator[Metric]:
    """Finished batches per model (each dataset x model cell once, at its latest materialization) and
    what the runs that finished them did."""
    batches = CounterMetricFamily(f"{PREFIX}completed_batches", "Finished batch_responses cells (a dataset on a "
                                  "model), inbox, API and UI alike", labels=["model"])
    rows = CounterMetricFamily(f"{PREFIX}rows", "Rows answered in finished batches, by outcome",
                               labels=["model", "outcome"])
    tokens = CounterMetricFamily(f"{PREFIX}tokens", "Tokens in finished batches", labels=["model", "kind"])
    hosted = CounterMetricFamily(f"{PREFIX}hosted_cost_usd", "What the tokens of finished batches would cost on "
                                 "hosted batch APIs (core/hosted_prices.yaml)", labels=["model", "hosted_model"])
    for model, (count, total) in sorted(tally.per_model().items()):
        batches.add_metric([model], count)
        rows.add_metric([model, "succeeded"], total.succeeded)
        rows.add_metric([model, "failed"], total.failed)
        tokens.add_metric([model, "prompt"], total.prompt_tokens)
        tokens.add_metric([model, "completion"], total.completion_tokens)
        for name, usd in sorted(total.hosted_cost_usd.items()):
            hosted.add_metric([model, name], usd)
    yield from (batches, rows, tokens, hosted)

    generated = CounterMetricFamily(f"{PREFIX}generated_rows", "Rows the engine generated in finished runs "
                                    "(resumed rows are not generated again)", labels=["model"])
    seconds = CounterMetricFamily(f"{PREFIX}generation_seconds", "Generation time of finished runs",
                                  labels=["model"])
    starts = SummaryMetricFamily(f"{PREFIX}engine_start_seconds", "Engine loads by finished runs and their "
                                 "seconds (count: loads)", labels=["model", "engine"])
    reuses = CounterMetricFamily(f"{PREFIX}engine_reuses", "Finished runs that found their engine loaded",
                                 labels=["model", "engine"])
    reused = CounterMetricFamily(f"{PREFIX}rows_reused", "Rows of finished runs answered without generating: "
                                 "from a copy in the batch (batch_copy) or an earlier batch on the same engine "
                                 "(result_cache)", labels=["model", "source"])
    gpu = CounterMetricFamily(f"{PREFIX}gpu_seconds", "Accelerator time of finished runs, engine loads included "
                              "(seconds x the entry's tensor_parallel_size)", labels=["model"])
    for model, runs in sorted(tally.runs.items()):
        generated.add_metric([model], runs.rows_generated)
        seconds.add_metric([model], runs.generation_seconds)
        gpu.add_metric([model], runs.gpu_seconds)
        for source, count in sorted(runs.rows_reused.items()):
            reused.add_metric([model, source], count)
        for engine, count in sorted(runs.engine_starts.items()):
            starts.add_metric([model, engine], count_value=count, sum_value=runs.engine_start_seconds[engine])
        for engine, count in sorted(runs.engine_reuses.items()):
            reuses.add_metric([model, engine], count)
    yield from (generated, seconds, reused, starts, reuses, gpu)


def queue_families(state: QueueState) -> Iterator[Metric]:
    yield GaugeMetricFamily(f"{PREFIX}queue_depth", "GPU runs waiting for the GPU", value=state.queued)
    yield GaugeMetricFamily(f"{PREFIX}queue_oldest_wait_seconds", "How long the oldest queued GPU run has "
                            "waited (0: none waits)", value=state.oldest_wait_seconds)
    yield GaugeMetricFamily(f"{PREFIX}running_runs", "GPU runs holding the GPU", value=len(state.running))
    done = GaugeMetricFamily(f"{PREFIX}running_rows_done", "Rows on disk of the running GPU runs (resumed "
                             "included)", labels=["model"])
    expected = GaugeMetricFamily(f"{PREFIX}running_rows_expected", "Rows of the running GPU runs' batches",
                                 labels=["model"])
    rate = GaugeMetricFamily(f"{PREFIX}rows_per_second", "Rows the running GPU runs wrote since they started, "
                             "per second (engine start included)", labels=["model"])
    for model in sorted({run.model for run in state.running}):
        runs = [run for run in state.running if run.model == model]
        done.add_metric([model], sum(run.rows_done for run in runs))
        if all(run.rows_total is not None for run in runs):
            expected.add_metric([model], sum(run.rows_total for run in runs))
        rate.add_metric([model], sum(run.rows_per_second for run in runs))
    yield from (done, expected, rate)


def engine_server_families(hosts: list[EngineHost]) -> Iterator[Metric]:
    """The warm servers as we know them, one sample per running host and slot; present only while one runs."""
    if not hosts:
        return
    labels = [SLOT_LABEL, "model", "served_name"]
    up = GaugeMetricFamily(f"{PREFIX}engine_server_up", "1 if the warm engine host answered its /metrics",
                           labels=labels)
    started = GaugeMetricFamily(f"{PREFIX}engine_server_start_time_seconds", "When the warm engine host started "
                                "(Unix time)", labels=labels)
    load = GaugeMetricFamily(f"{PREFIX}engine_server_load_seconds", "How long the warm engine host took to "
                             "load", labels=labels)
    for host in hosts:
        values = [host.slot_label, host.state.started_by_model, host.state.served_name]
        up.add_metric(values, 1 if host.answered else 0)
        started.add_metric(values, host.state.started_at)
        if host.state.load_seconds is not None:
            load.add_metric(values, host.state.load_seconds)
    yield from (up, started)
    if load.samples:
        yield load
