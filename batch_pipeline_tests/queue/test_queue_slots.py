"""The GPU queue with several accelerator slots: a model warm on a free slot goes first, then a model
loaded nowhere, and a run never waits idle for a busy slot's model; one slot is today's order."""

import datetime
import itertools

from dagster import AssetKey, DagsterEvent, DagsterEventType, DagsterRunStatus, build_sensor_context, instance_for_test
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from batch_pipeline.core.names import GPU_SLOT_TAG, PRIORITY_TAG, REASON_TAG
from batch_pipeline.queue.policy import QueuedRun, QueuePolicy, SlotState, queue_priorities
from batch_pipeline.queue.runs import gpu_queue
from batch_pipeline.queue.sensors import build_queue_sensor

POLICY = QueuePolicy(max_wait_seconds=600, max_passed_over=3)
NOW = 10_000.0
_JOB = "generate_responses"


def _gpu_run(instance, model: str, status=DagsterRunStatus.QUEUED, **tags):
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("batch_pipeline"), "__repository__"),
                             _JOB)
    return create_run_for_test(instance, job_name=_JOB, status=status, remote_job_origin=origin,
                               tags={"dagster/partition": f"ds-{model.lower()}|{model}", **tags},
                               asset_selection=frozenset({AssetKey("batch_responses")}))


def _runs(*models: str) -> list[QueuedRun]:
    return [QueuedRun(run_id=f"{model}{i}", model=model, queued_at=NOW - 100 + i) for i, model in enumerate(models)]


def _order(queued: list[QueuedRun], slots: list[SlotState]) -> list[str]:
    placements = queue_priorities(queued, None, NOW, POLICY, slots)
    return sorted(placements, key=lambda run_id: -placements[run_id].priority)


def test_warm_on_a_free_slot_first_then_loaded_nowhere_then_warm_only_on_a_busy_slot():
    slots = [SlotState(index=0, model="A", busy=True), SlotState(index=1, model="B")]
    queued = _runs("A", "C", "B")
    assert _order(queued, slots) == ["B2", "C1", "A0"]
    placements = queue_priorities(queued, None, NOW, POLICY, slots)
    assert placements["B2"].reason == "warm on free slot 1 (B): no reload"
    assert placements["C1"].reason == "first come, first served"
    assert placements["A0"].reason.startswith("warm only on busy slot(s) 0")


def test_a_run_never_waits_idle_for_its_busy_slot_when_another_is_free():
    """Only runs of the busy slot's model wait: the best of them goes first and takes the free slot."""
    slots = [SlotState(index=0, model="A", busy=True), SlotState(index=1, model="B")]
    placements = queue_priorities(_runs("A", "A"), None, NOW, POLICY, slots)
    assert placements["A0"].priority == 2 and placements["A1"].priority == 1


def test_with_every_slot_busy_the_models_warm_somewhere_go_first():
    slots = [SlotState(index=0, model="A", busy=True), SlotState(index=1, model="B", busy=True)]
    queued = _runs("C", "B", "A", "C")
    assert _order(queued, slots) == ["B1", "A2", "C0", "C3"]
    assert queue_priorities(queued, None, NOW, POLICY, slots)["B1"].reason == "same model as slot 1's (B): no reload"


def test_aging_and_user_priority_still_come_first_with_slots():
    slots = [SlotState(index=0, model="A"), SlotState(index=1, model="B")]
    queued = [QueuedRun(run_id="old-C", model="C", queued_at=NOW - 601),
              QueuedRun(run_id="urgent-C", model="C", queued_at=NOW - 5, user_priority=3),
              QueuedRun(run_id="warm-A", model="A", queued_at=NOW - 4)]
    assert _order(queued, slots) == ["old-C", "urgent-C", "warm-A"]


def test_one_slot_reduces_to_the_order_by_the_model_on_the_gpu():
    for models in itertools.product("ABC", repeat=4):
        queued = _runs(*models)
        for current, busy in itertools.product([None, "A", "B"], [False, True]):
            one_slot = [SlotState(index=0, model=current, busy=busy)]
            assert queue_priorities(queued, None, NOW, POLICY, one_slot) == \
                queue_priorities(queued, current, NOW, POLICY), (models, current, busy)


def _simulate(models: str, slot_count: int) -> tuple[int, int]:
    """The daemon and the runs: every free slot takes the best queued run (re-ranked after each
    start), the run takes the free slot where its model is warm, else an empty one, else any; then
    the running runs finish, first started first. Returns (loads, most runs at once)."""
    queue, slots, loads, widest = _runs(*models), [SlotState(index=i) for i in range(slot_count)], 0, 0
    while queue:
        while queue and any(not slot.busy for slot in slots):
            best = _order(queue, slots)[0]
            run = next(r for r in queue if r.run_id == best)
            free = [slot for slot in slots if not slot.busy]
            slot = min(free, key=lambda s: (s.model != run.model, s.model is not None, s.index))
            loads += slot.model != run.model
            slots[slot.index] = SlotState(index=slot.index, model=run.model, busy=True)
            queue = [r for r in queue if r.run_id != best]
        widest = max(widest, sum(slot.busy for slot in slots))
        slots = [slot.model_copy(update={"busy": False}) for slot in slots]
    return loads, widest


def test_two_slots_load_each_model_once_and_run_two_at_a_time():
    assert _simulate("ABABABAB", 2) == (2, 2)
    assert _simulate("AABBAB", 2) == (2, 2)
    assert _simulate("ABCABC", 3) == (3, 3)
    assert _simulate("ABAB", 1) == (2, 1)  # one slot: one load per model as before


def _start(instance, run, slot: int | None = None, finish: bool = False) -> None:
    """Records the run's start (and end) as its worker would, with the slot it took."""
    if slot is not None:
        instance.add_run_tags(run.run_id, {GPU_SLOT_TAG: str(slot)})
    now = datetime.datetime.now(datetime.timezone.utc)
    instance.run_storage.handle_run_event(run.run_id, DagsterEvent(DagsterEventType.RUN_START.value,
                                                                   job_name=run.job_name), now)
    if finish:
        instance.run_storage.handle_run_event(run.run_id, DagsterEvent(DagsterEventType.RUN_SUCCESS.value,
                                                                       job_name=run.job_name), now)


def test_the_sensor_reads_each_slots_model_from_the_runs_that_held_it(pipeline):
    with instance_for_test() as instance:
        finished_b = _gpu_run(instance, "B", status=DagsterRunStatus.NOT_STARTED)
        _start(instance, finished_b, slot=1, finish=True)
        _gpu_run(instance, "A", status=DagsterRunStatus.STARTED, **{GPU_SLOT_TAG: "0"})
        a2, c1, b1 = _gpu_run(instance, "A"), _gpu_run(instance, "C"), _gpu_run(instance, "B")

        queue = gpu_queue(instance, slot_count=2)
        assert [(s.model, s.busy) for s in queue.slots] == [("A", True), ("B", False)]
        build_queue_sensor(5, POLICY, slot_count=2)(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
        priorities = [int(instance.get_run_by_id(run.run_id).tags[PRIORITY_TAG]) for run in (b1, c1, a2)]
        assert priorities == [3, 2, 1]
        assert instance.get_run_by_id(b1.run_id).tags[REASON_TAG] == "warm on free slot 1 (B): no reload"

        # The same records seen as one slot: the running model goes first, as before slots.
        build_queue_sensor(5, POLICY)(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
        assert instance.get_run_by_id(a2.run_id).tags[REASON_TAG].startswith("same model as the GPU's")
        assert int(instance.get_run_by_id(a2.run_id).tags[PRIORITY_TAG]) == 3


def test_when_every_slot_is_taken_all_count_as_busy_even_before_a_run_tags_its_slot():
    with instance_for_test() as instance:
        _gpu_run(instance, "A", status=DagsterRunStatus.STARTED, **{GPU_SLOT_TAG: "0"})
        _gpu_run(instance, "B", status=DagsterRunStatus.STARTED)  # started, still taking its slot
        assert [s.busy for s in gpu_queue(instance, slot_count=2).slots] == [True, True]


def test_an_adapter_counts_as_its_base_models_engine():
    runs = [QueuedRun(run_id="other", model="other-model", queued_at=1.0),
            QueuedRun(run_id="adapter", model="smol-terse", queued_at=2.0)]
    base = {"smol-terse": "SmolLM2"}
    placements = queue_priorities(runs, "SmolLM2", 10.0, POLICY, engine_of=lambda name: base.get(name, name))
    assert placements["adapter"].priority > placements["other"].priority
    assert "no reload" in placements["adapter"].reason
    by_name = queue_priorities(runs, "SmolLM2", 10.0, POLICY)
    assert by_name["other"].priority > by_name["adapter"].priority
