from dagster import Definitions

from batch_pipeline.core.settings import Settings
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.queue.policy import QueuePolicy
from batch_pipeline.queue.sensors import build_queue_sensor


def queue_definitions(settings: Settings) -> Definitions:
    policy = QueuePolicy(max_wait_seconds=settings.queue_max_wait_seconds,
                         max_passed_over=settings.queue_max_passed_over)
    return Definitions(sensors=[build_queue_sensor(settings.sensor_interval, policy,
                                                   slot_count=len(parse_slots(settings.gpu_slots)))])
