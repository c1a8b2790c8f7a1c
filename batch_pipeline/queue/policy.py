"""The GPU queue's order: a pure function from queue state to priorities the Dagster daemon obeys.

Rank, best first:
1. aged runs: waited longer than `max_wait_seconds`, or passed over by `max_passed_over` runs that
   started after they were queued; oldest first, whatever else is waiting (nobody starves);
2. an explicit user priority (`dagster/priority` set at launch), higher first;
3. by accelerator slot (one slot: the model on the GPU now, or last, goes first):
   - while a slot is free: runs whose model is warm on a free slot (no load), then runs of a model
     loaded nowhere, then runs of a model warm only on busy slots: the daemon starts the best run as
     soon as a slot frees, so such a run never waits idle for its busy slot, it loads on a free one;
   - while every slot is busy: runs of a model warm on some slot, which likely reuse it;
4. earliest deadline first (created + completion window; 24 hours for runs that name none);
5. first come, first served.
"""

from collections.abc import Callable

from pydantic import BaseModel

# OpenAI's only completion window: the deadline of a run whose batch names none (the inbox's).
DEFAULT_WINDOW_SECONDS = 24 * 3600

# The engine a model name runs on: a LoRA adapter's is its base model's.
EngineOf = Callable[[str], str]


class QueuePolicy(BaseModel):
    max_wait_seconds: float = 1800.0
    max_passed_over: int = 5


class QueuedRun(BaseModel):
    run_id: str
    model: str
    queued_at: float
    user_priority: int | None = None
    passed_over: int = 0
    deadline: float | None = None


class SlotState(BaseModel):
    """An accelerator slot as the queue sees it: the model of its latest run (warm there) and
    whether a run holds it now."""

    index: int
    model: str | None = None
    busy: bool = False


class Placement(BaseModel):
    priority: int
    reason: str


def _aged(run: QueuedRun, now: float, policy: QueuePolicy) -> bool:
    return now - run.queued_at >= policy.max_wait_seconds or run.passed_over >= policy.max_passed_over


def _same_model(name: str) -> str:
    return name


def _warm_slots(run: QueuedRun, slots: list[SlotState], engine_of: EngineOf, free: bool | None = None) -> list[int]:
    return [slot.index for slot in slots if slot.model is not None and engine_of(slot.model) == engine_of(run.model)
            and (free is None or slot.busy != free)]


def _affinity(run: QueuedRun, slots: list[SlotState], engine_of: EngineOf) -> tuple[int, str]:
    """The run's tier (0 goes first) and why, from where its model's engine is warm."""
    one_slot = len(slots) == 1
    if not any(not slot.busy for slot in slots) or one_slot:
        if warm := _warm_slots(run, slots, engine_of):
            where = "the GPU's" if one_slot else f"slot {warm[0]}'s"
            return 0, f"same model as {where} ({run.model}): no reload"
        return 1, "first come, first served"
    if warm := _warm_slots(run, slots, engine_of, free=True):
        return 0, f"warm on free slot {warm[0]} ({run.model}): no reload"
    if busy := _warm_slots(run, slots, engine_of, free=False):
        return 2, f"warm only on busy slot(s) {', '.join(map(str, busy))}: loads on a free slot after the others"
    return 1, "first come, first served"


def _reason(run: QueuedRun, aged: bool, affinity: str, now: float) -> str:
    if aged:
        return f"aged: waited {(now - run.queued_at) / 60:.0f} min, passed over by {run.passed_over} run(s)"
    if run.user_priority:
        return f"user priority {run.user_priority}"
    return affinity


def queue_priorities(queued: list[QueuedRun], current_model: str | None, now: float,
                     policy: QueuePolicy, slots: list[SlotState] | None = None,
                     engine_of: EngineOf = _same_model) -> dict[str, Placement]:
    """Distinct priorities, highest for the run to go next, so the daemon's order is exactly ours.
    Without `slots` there is one slot, free, holding `current_model`. `engine_of` names the engine a
    model runs on (a LoRA adapter runs on its base model's), so runs sharing an engine group together."""
    slots = slots if slots is not None else [SlotState(index=0, model=current_model)]
    affinity = {run.run_id: _affinity(run, slots, engine_of) for run in queued}

    def rank(run: QueuedRun) -> tuple:
        aged = _aged(run, now, policy)
        deadline = run.deadline if run.deadline is not None else run.queued_at + DEFAULT_WINDOW_SECONDS
        return (not aged, -(run.user_priority or 0) if not aged else 0,
                affinity[run.run_id][0], deadline, run.queued_at, run.run_id)

    ordered = sorted(queued, key=rank)
    return {run.run_id: Placement(priority=len(ordered) - position,
                                  reason=_reason(run, _aged(run, now, policy), affinity[run.run_id][1], now))
            for position, run in enumerate(ordered)}
