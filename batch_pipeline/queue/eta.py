"""When each GPU run should start and finish: the queue played forward on its slots, in the order the
daemon will take it, at each model's measured speed. Pure, so the plan is testable without Dagster."""

from pydantic import BaseModel

from batch_pipeline.queue.speeds import ModelSpeed, Speeds


class PlannedCell(BaseModel):
    """A GPU run as the forecast needs it; running cells first, then queued ones in dequeue order."""

    run_id: str
    model: str
    rows_left: int
    running: bool
    # The run's own rows per second so far: better than history once it has written something.
    live_rows_per_second: float | None = None
    # Completion tokens each row may produce (its max_tokens), when the batch says.
    max_tokens_per_row: float | None = None


class Forecast(BaseModel):
    expected_start_at: float
    expected_completion_at: float
    basis: str


def seconds_for(rows: int, speed: ModelSpeed, max_tokens_per_row: float | None = None) -> float:
    """Rows at the model's measured pace, shortened when the batch caps answers below the model's mean."""
    seconds = rows / speed.rows_per_second
    if max_tokens_per_row and speed.tokens_per_row:
        seconds *= min(1.0, max_tokens_per_row / speed.tokens_per_row)
    return seconds


def forecast(cells: list[PlannedCell], speeds: Speeds, slot_models: list[str | None],
             now: float, started_at: dict[str, float] | None = None) -> dict[str, Forecast]:
    """`slot_models`: the model each slot holds (its latest run's), one entry per slot; a queued run takes
    the slot that frees first, starts once launched, and pays a load when that slot holds another model;
    every run pays its model's per-run overhead (a running one only what is left after its last row)."""
    started_at = started_at or {}
    free_at = [now] * len(slot_models)
    holds = list(slot_models)
    plans: dict[str, Forecast] = {}
    for cell in cells:
        speed = speeds.of(cell.model)
        slot = min(range(len(free_at)), key=lambda index: (free_at[index], holds[index] != cell.model))
        if cell.running and cell.live_rows_per_second:
            seconds, basis = cell.rows_left / cell.live_rows_per_second, "this run's pace"
        else:
            seconds, basis = seconds_for(cell.rows_left, speed, cell.max_tokens_per_row), speed.basis
        if cell.running:
            start = started_at.get(cell.run_id, now)
            done = now + seconds + speed.wrap_up_seconds
        else:
            start = max(free_at[slot], now) + speeds.launch_seconds
            load = 0.0 if holds[slot] == cell.model else speed.load_seconds
            done = start + load + speed.overhead_seconds + seconds
        plans[cell.run_id] = Forecast(expected_start_at=start, expected_completion_at=done, basis=basis)
        free_at[slot], holds[slot] = done, cell.model
    return plans
