"""Whether the Dagster instance answers, within a deadline: /health must answer even when the
instance's storage hangs (a locked SQLite file, an unreachable PostgreSQL).

A hung query cannot be interrupted from Python, so at most one is in flight: while it hangs, every
check reports for how long instead of starting another.
"""

import threading
import time
from collections.abc import Callable

from dagster import DagsterInstance

# A one-row query; a storage slower than this is unusable for the API anyway.
PROBE_SECONDS = 5.0


class _Query:
    def __init__(self, started: float):
        self.started, self.done, self.problem = started, threading.Event(), None


class InstanceProbe:
    def __init__(self, instance: DagsterInstance, seconds: float = PROBE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._instance, self._seconds, self._clock = instance, seconds, clock
        self._guard = threading.Lock()
        self._pending: _Query | None = None

    def problem(self) -> str | None:
        """None when the instance answered; else what went wrong (an error's type, or a query that hangs)."""
        with self._guard:
            if self._pending is None:
                self._pending = _Query(self._clock())
                threading.Thread(target=self._run, args=(self._pending,), daemon=True,
                                 name="dagster-instance-probe").start()
            query = self._pending
        if not query.done.wait(max(0.0, query.started + self._seconds - self._clock())):
            return f"a query to the Dagster instance has not returned for {self._clock() - query.started:.0f}s"
        with self._guard:
            if self._pending is query:
                self._pending = None
        return query.problem

    def _run(self, query: _Query) -> None:
        try:
            self._instance.get_run_records(limit=1)
        except Exception as exc:  # any storage failure means the instance is not usable
            query.problem = type(exc).__name__
        finally:
            query.done.set()
