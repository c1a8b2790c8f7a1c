"""The shim's background refresher: passes over the unfinished batches, one after another, and the
watchdog /health reads.

A pass stops taking up batches once half the stall limit has gone (the rest go first next pass), so
only a call that hangs makes a pass late. A hung call cannot be interrupted from Python, and starting
more passes beside it would only pile up threads waiting on the same storage; so the refresher waits
for it, and /health says `degraded` with the time since the last pass completed. Requests meanwhile
answer from the stored records (`ShimService.batch`).
"""

import asyncio
import time
from collections.abc import Callable

import anyio

from batch_pipeline.api.models import RefreshHealth


class Refresher:
    def __init__(self, refresh: Callable[[float], None], interval_seconds: float, stall_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        """`refresh(deadline)` is one pass (`ShimService.refresh_active`); `deadline` on `clock`."""
        self._refresh, self._interval, self._stall = refresh, interval_seconds, stall_seconds
        self._clock = clock
        # Before the first pass completes, its age counts from start-up.
        self._completed_at = clock()

    def run_pass(self) -> None:
        self._refresh(self._clock() + self._stall / 2)
        self._completed_at = self._clock()

    async def run_forever(self) -> None:
        while True:  # refresh_active logs and records its failures (see /health) and never raises
            await anyio.to_thread.run_sync(self.run_pass)
            await asyncio.sleep(self._interval)

    def health(self) -> RefreshHealth:
        age = max(0.0, self._clock() - self._completed_at)
        return RefreshHealth(age_seconds=round(age, 1), stalled=age > self._stall, stall_limit_seconds=self._stall)

    def stall_detail(self) -> str | None:
        """What /health says while the refresher is stalled."""
        state = self.health()
        if not state.stalled:
            return None
        return (f"the batch refresher has completed no pass for {state.age_seconds:.0f}s (limit "
                f"{self._stall:.0f}s, BATCH_PIPELINE_SHIM_REFRESH_STALL_SECONDS): a call it made hangs; "
                "batches are shown as last stored until it returns")
