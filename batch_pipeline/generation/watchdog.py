"""A deadline on every engine step: results that stop coming fail the run instead of holding the GPU.

A hung engine (a wedged collective, a stuck kernel, a host that stopped answering without closing the
connection) blocks inside its iterator where no timeout reaches. So the engine's results are read in a
thread of their own and handed over a bounded queue; the run waits on the queue with a deadline.
"""

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_PUT_POLL_SECONDS = 0.5


class EngineStalled(RuntimeError):
    """The engine returned nothing for longer than the stall deadline."""


def with_stall_deadline(results: Iterator[T], seconds: float, what: str, buffer: int = 1024) -> Iterator[T]:
    """`results`, read in a daemon thread; raises EngineStalled when none arrives for `seconds`.
    Closing the returned iterator closes `results` in its own thread (aborting what is in flight) and
    waits for that up to `seconds`; a thread stuck in a hung engine is left behind, to die with the process."""
    handoff: queue.Queue = queue.Queue(maxsize=max(1, buffer))
    stop = threading.Event()

    def put(item: tuple) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_PUT_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for result in results:
                if not put(("result", result)):
                    break
        except BaseException as exc:  # handed to the reader, which raises it in the run's thread
            put(("error", exc))
        else:
            put(("end", None))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()

    feeder = threading.Thread(target=feed, name=f"engine-results-{what}", daemon=True)
    feeder.start()
    stalled = False
    try:
        while True:
            try:
                kind, value = handoff.get(timeout=seconds)
            except queue.Empty:
                stalled = True
                raise EngineStalled(f"the engine for {what} returned nothing for {seconds:.0f}s "
                                    "(BATCH_PIPELINE_ENGINE_STALL_SECONDS): it is taken to be hung") from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        if not stalled:
            feeder.join(timeout=seconds)
