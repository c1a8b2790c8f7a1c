"""The GPU queue's ordering policy, as a pure function: queue state in, priorities out."""

from batch_pipeline.queue.policy import QueuedRun, QueuePolicy, queue_priorities

POLICY = QueuePolicy(max_wait_seconds=600, max_passed_over=3)
NOW = 10_000.0


def _order(queued: list[QueuedRun], current_model: str | None, policy: QueuePolicy = POLICY) -> list[str]:
    placements = queue_priorities(queued, current_model, NOW, policy)
    return sorted(placements, key=lambda run_id: -placements[run_id].priority)


def _interleaved(count: int) -> list[QueuedRun]:
    return [QueuedRun(run_id=f"r{i}", model="A" if i % 2 == 0 else "B", queued_at=NOW - 100 + i)
            for i in range(count)]


def test_runs_for_the_model_on_the_gpu_go_first_then_first_come_first_served():
    assert _order(_interleaved(6), "B") == ["r1", "r3", "r5", "r0", "r2", "r4"]
    assert _order(_interleaved(6), None) == ["r0", "r1", "r2", "r3", "r4", "r5"]


def test_an_interleaved_stream_costs_one_load_per_model():
    """Simulates the daemon: take the top run, make its model current, re-rank the rest."""
    queue, current, loads = _interleaved(10), None, 0
    while queue:
        first = _order(queue, current)[0]
        run = next(r for r in queue if r.run_id == first)
        loads += run.model != current
        current = run.model
        queue = [r for r in queue if r.run_id != first]
    assert loads == 2


def test_explicit_user_priority_outranks_model_grouping():
    queued = _interleaved(4)
    queued[2] = queued[2].model_copy(update={"user_priority": 5, "model": "A"})
    assert _order(queued, "B")[0] == "r2"
    queued[3] = queued[3].model_copy(update={"user_priority": -1})
    assert _order(queued, "B")[-1] == "r3"


def test_a_run_that_waited_too_long_goes_next_even_before_user_priority():
    queued = [QueuedRun(run_id="old-A", model="A", queued_at=NOW - 601),
              QueuedRun(run_id="urgent-B", model="B", queued_at=NOW - 5, user_priority=10),
              QueuedRun(run_id="new-B", model="B", queued_at=NOW - 4)]
    placements = queue_priorities(queued, "B", NOW, POLICY)
    assert _order(queued, "B") == ["old-A", "urgent-B", "new-B"]
    assert placements["old-A"].reason.startswith("aged")
    assert placements["urgent-B"].reason == "user priority 10"
    assert placements["new-B"].reason.startswith("same model")


def test_a_run_passed_over_too_often_goes_next():
    queued = [QueuedRun(run_id="a", model="A", queued_at=NOW - 10, passed_over=3),
              QueuedRun(run_id="b", model="B", queued_at=NOW - 5)]
    assert _order(queued, "B") == ["a", "b"]
    assert _order(queued, "B", QueuePolicy(max_wait_seconds=600, max_passed_over=4)) == ["b", "a"]


def test_priorities_are_distinct_and_positive():
    placements = queue_priorities(_interleaved(7), "A", NOW, POLICY)
    assert sorted(p.priority for p in placements.values()) == list(range(1, 8))
    assert queue_priorities([], "A", NOW, POLICY) == {}
