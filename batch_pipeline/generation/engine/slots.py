"""Which accelerator slot a run's engine uses, held under a kernel lock for as long as the run needs it.

The `gpu` pool lets as many runs start as there are slots, but it does not say which slot each gets,
and a run launched outside the pool (a test, a script) is not counted at all. So a run takes a slot
under an exclusive lock on `slot.lock` in the slot's folder: two runs never share a slot however they
were launched, and the kernel frees the lock when the holder dies.

The lock is a POSIX record lock (`fcntl.lockf`), not `flock`: a `flock` lock belongs to the open
file, which vLLM's forked EngineCore inherits and would keep locked after a killed run worker (and
only the slot's next run reaps that orphan). A record lock belongs to the process alone, so a process
holds at most one slot and a nested `hold_slot` in it shares that slot.
"""

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.record_lock import try_record_lock, write_holder
from batch_pipeline.core.slots import GpuSlot
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.generation.engine.spec import EngineSpec

_POLL_SECONDS = 1.0
_LOCK_FILE = "slot.lock"


class SlotError(ValueError):
    """No configured slot has enough devices for the model: waiting would not help."""


class SlotTimeout(RuntimeError):
    """Every fitting slot stayed held past the deadline: a retry may find one free."""


@dataclass(frozen=True)
class HeldSlot:
    slot: GpuSlot
    files: ServerFiles


# Slot folders this process holds. Never opened again while held: closing any descriptor of a file
# frees this process's record lock on it.
_taken: set[Path] = set()
_taken_guard = threading.Lock()


def slot_files(layout: DataLayout, slot: GpuSlot) -> ServerFiles:
    return ServerFiles(layout.engine_slot(slot))


def _tensor_parallel_size(spec: EngineSpec) -> int:
    return spec.entry.engine.tensor_parallel_size


def _preference(held: HeldSlot, spec: EngineSpec) -> tuple:
    """Best first: the slot where this engine is warm (or loading), then one of exactly the model's
    size (a larger slot is kept for the models that need it), then an empty one, then the lowest."""
    state = held.files.read()
    alive = state is not None and state.supervisor.process() is not None
    warm = alive and state.fingerprint == spec.fingerprint and state.status in ("starting", "ready")
    exact = not held.slot.configured or len(held.slot.devices) == _tensor_parallel_size(spec)
    return not warm, not exact, alive, held.slot.index




def _holders(candidates: list[HeldSlot]) -> str:
    """Read only for slots this process does not hold: closing a descriptor of a held one would free it."""
    named = []
    for candidate in candidates:
        if candidate.files.folder in _taken:
            named.append(f"{candidate.slot.describe()} by this process")
            continue
        try:
            holder = (candidate.files.folder / _LOCK_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            holder = ""
        named.append(f"{candidate.slot.describe()} by {holder or 'an unnamed process'}")
    return "; ".join(named)


def _take(candidates: list[HeldSlot], spec: EngineSpec) -> tuple[HeldSlot, IO] | None:
    for candidate in sorted(candidates, key=lambda held: _preference(held, spec)):
        if candidate.files.folder in _taken:
            continue
        if (handle := try_record_lock(candidate.files.folder / _LOCK_FILE)) is not None:
            return candidate, handle
    return None


@contextlib.contextmanager
def hold_slot(layout: DataLayout, slots: tuple[GpuSlot, ...], spec: EngineSpec,
              on_wait: Callable[[], None] = lambda: None, holder: str = "a process",
              wait_seconds: float = float("inf")) -> Iterator[HeldSlot]:
    """A free slot that fits the model, preferring the one where its engine is warm; waits (calling
    `on_wait` once) while every fitting slot is held, and raises SlotTimeout, naming their holders,
    after `wait_seconds`. `holder` (e.g. the run) is recorded in the slot for those who wait."""
    candidates = [HeldSlot(slot, slot_files(layout, slot)) for slot in slots
                  if slot.fits(_tensor_parallel_size(spec))]
    if not candidates:
        raise SlotError(f"{spec.model} needs {_tensor_parallel_size(spec)} devices (tensor_parallel_size) but no "
                        f"slot of BATCH_PIPELINE_GPU_SLOTS has that many: "
                        f"{', '.join(slot.describe() for slot in slots)}")
    waited, started = False, time.monotonic()
    while True:
        with _taken_guard:
            if (taken := _take(candidates, spec)) is not None:
                _taken.add(taken[0].files.folder)
                break
        if not waited:
            on_wait()
            waited = True
        if time.monotonic() - started >= wait_seconds:
            raise SlotTimeout(f"no GPU slot for {spec.model} came free within {wait_seconds:.0f}s "
                              f"(BATCH_PIPELINE_SLOT_WAIT_SECONDS): held are {_holders(candidates)}")
        time.sleep(_POLL_SECONDS)
    held, handle = taken
    try:
        write_holder(handle, f"{holder} (pid {os.getpid()})")
        yield held
    finally:
        with _taken_guard:
            _taken.discard(held.files.folder)
            handle.close()  # closing releases the record lock
