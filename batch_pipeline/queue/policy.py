"""The GPU queue's order: a pure function from queue state to priorities the Dagster daemon obeys.

Rank, best first:
1. aged runs: waited longer than `max_wait_seconds`, or passed over by `max_passed_over` runs that
   started after they were queued; oldest first, whatever else is waiting (nobody starves);
2. an explicit user priority (`dagster/priority` set at launch), higher first;
3. runs for the model on the GPU now (or last), so interleaved submissions load each model once;
4. first come, first served.
"""

from pydantic import BaseModel


class QueuePolicy(BaseModel):
    max_wait_seconds: float = 1800.0
    max_passed_over: int = 5


class QueuedRun(BaseModel):
    run_id: str
    model: str
    queued_at: float
    user_priority: int | None = None
    passed_over: int = 0


class Placement(BaseModel):
    priority: int
    reason: str


def _aged(run: QueuedRun, now: float, policy: QueuePolicy) -> bool:
    return now - run.queued_at >= policy.max_wait_seconds or run.passed_over >= policy.max_passed_over


def _reason(run: QueuedRun, aged: bool, current_model: str | None, now: float) -> str:
    if aged:
        return f"aged: waited {(now - run.queued_at) / 60:.0f} min, passed over by {run.passed_over} run(s)"
    if run.user_priority:
        return f"user priority {run.user_priority}"
    if run.model == current_model:
        return f"same model as the GPU's ({current_model}): no reload"
    return "first come, first served"


def queue_priorities(queued: list[QueuedRun], current_model: str | None, now: float,
                     policy: QueuePolicy) -> dict[str, Placement]:
    """Distinct priorities, highest for the run to go next, so the daemon's order is exactly ours."""

    def rank(run: QueuedRun) -> tuple:
        aged = _aged(run, now, policy)
        return (not aged, -(run.user_priority or 0) if not aged else 0,
                run.model != current_model, run.queued_at, run.run_id)

    ordered = sorted(queued, key=rank)
    return {run.run_id: Placement(priority=len(ordered) - position,
                                  reason=_reason(run, _aged(run, now, policy), current_model, now))
            for position, run in enumerate(ordered)}
