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


def expected_tokens_per_row(speed: ModelSpeed, max_tokens_per_row: float | None) -> float | None:
    """Answers run to their cap unless the model is known to stop earlier."""
    if max_tokens_per_row is None:
        return speed.natural_tokens_per_row or speed.tokens_per_row
    return min(max_tokens_per_row, speed.natural_tokens_per_row or max_tokens_per_row)


def seconds_for(rows: int, speed: ModelSpeed, max_tokens_per_row: float | None = None) -> float:
    """Rows at the model's measured cost per row and per answer token once runs have told them apart;
    until then at its rows per second."""
    tokens = expected_tokens_per_row(speed, max_tokens_per_row)
    if speed.seconds_per_row is None or speed.seconds_per_token is None or tokens is None:
        return rows / speed.rows_per_second
    return rows * (speed.seconds_per_row + speed.seconds_per_token * tokens)


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
