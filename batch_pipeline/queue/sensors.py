import time
from collections.abc import Callable

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from batch_pipeline.core.names import EXPECTED_COMPLETION_TAG, EXPECTED_START_TAG, QUEUE_SENSOR
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.queue.policy import QueuePolicy, SlotState, queue_priorities
from batch_pipeline.queue.runs import gpu_queue, placement_tags
from batch_pipeline.queue.view import queue_cells


def _slots_summary(slots: list[SlotState]) -> str:
    if len(slots) == 1:
        return slots[0].model or "no model"
    return ", ".join(f"slot {s.index}: {s.model or 'no model'}{' (busy)' if s.busy else ''}" for s in slots)


def _engine_of(context: SensorEvaluationContext, pipeline: PipelineConfig) -> Callable[[str], str]:
    """Adapters count as their base model's engine; a name the registry no longer knows as itself."""
    try:
        registry = pipeline.registry()
    except RegistryError as exc:
        context.log.warning(f"queue order by model name only: {exc}")
        return lambda name: name
    names = set(registry.names())
    return lambda name: registry.base_model(name) if name in names else name


def _minute(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


def _tag_forecasts(context: SensorEvaluationContext, pipeline: PipelineConfig, slot_count: int) -> None:
    """Each queued run shows when it should start and finish (to the minute, so it changes rarely)."""
    for cell in queue_cells(context.instance, pipeline.layout, slot_count=slot_count):
        if cell.status != "queued" or cell.expected_completion_at is None:
            continue
        wanted = {EXPECTED_START_TAG: _minute(cell.expected_start_at),
                  EXPECTED_COMPLETION_TAG: _minute(cell.expected_completion_at)}
        run = context.instance.get_run_by_id(cell.run_id)
        if run is not None and any(run.tags.get(key) != value for key, value in wanted.items()):
            context.instance.add_run_tags(cell.run_id, wanted)


def build_queue_sensor(interval_seconds: int, policy: QueuePolicy, slot_count: int = 1) -> SensorDefinition:
    """Re-prioritizes queued GPU runs (model grouping by slot, aging, user priority) by re-tagging them.

    It launches nothing; the daemon's dequeue pass reads the new `dagster/priority` tags. A run queued
    between two ticks waits at most one interval for its placement.
    """

    @sensor(name=QUEUE_SENSOR, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _gpu_queue_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        queue = gpu_queue(context.instance, slot_count)
        if not queue.queued:
            return SkipReason("no queued GPU runs")
        placements = queue_priorities(queue.policy_input, queue.current_model, time.time(), policy, queue.slots,
                                      engine_of=_engine_of(context, pipeline))
        models = {run.run_id: run.model for run in queue.policy_input}
        changed = 0
        for record in queue.queued:
            run = record.dagster_run
            if tags := placement_tags(run, placements[run.run_id], models[run.run_id]):
                context.instance.add_run_tags(run.run_id, tags)
                changed += 1
        _tag_forecasts(context, pipeline, slot_count)
        return SkipReason(f"{len(queue.queued)} queued GPU run(s) after {_slots_summary(queue.slots)}; "
                          f"re-tagged {changed}")

    return _gpu_queue_sensor
