"""Which engine serves a run: the long-lived server of its slot (reused across runs) or an in-process
engine confined to that slot's devices."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from batch_pipeline.core.processes import reap_orphaned_engines
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.settings import EngineMode
from batch_pipeline.generation.engine.environment import configure_engine_environment
from batch_pipeline.generation.engine.factory import engine_for, release_engine
from batch_pipeline.generation.engine.interface import EngineFailure, StreamingEngine
from batch_pipeline.generation.engine.server import acquire_server, ready_server_for, stop_server
from batch_pipeline.generation.engine.server_client import ServedEngine
from batch_pipeline.generation.engine.server_state import EngineServerError
from batch_pipeline.generation.engine.slots import HeldSlot
from batch_pipeline.generation.engine.spec import EngineSpec


@dataclass(frozen=True)
class EngineUse:
    engine: StreamingEngine | None
    kind: Literal["server", "in_process", "ray", "none"]
    reused: bool
    load_seconds: float


# A run that found nothing to generate.
NO_ENGINE = EngineUse(engine=None, kind="none", reused=False, load_seconds=0.0)
# A run whose engines were Ray actors (generation.ray): loaded there, one per actor.
ON_RAY = EngineUse(engine=None, kind="ray", reused=False, load_seconds=0.0)


def choose_engine(mode: EngineMode, rows_to_generate: int, server_ready: bool,
                  in_process_min_rows: int) -> Literal["server", "in_process"]:
    """A loaded server always wins; otherwise large batches go in-process, where nothing else shares
    the CPU, and small ones start the server (or wait for it to load) so the next run can reuse it."""
    if mode != "auto":
        return mode
    if server_ready or rows_to_generate < in_process_min_rows:
        return "server"
    return "in_process"


@contextlib.contextmanager
def engine_session(spec: EngineSpec, pipeline: PipelineConfig, rows_to_generate: int,
                   held: HeldSlot) -> Iterator[EngineUse]:
    """An engine on the devices of the slot the run holds."""
    layout = pipeline.layout
    configure_engine_environment(layout.root, held.slot, pipeline.gpu_slot_kind,
                                 spec.entry.engine.tensor_parallel_size)
    files, slot = held.files, held.slot.index
    kind = choose_engine(pipeline.engine_mode, rows_to_generate,
                         ready_server_for(files, spec.fingerprint) is not None, pipeline.in_process_min_rows)
    if kind == "server":
        release_engine()  # never two engines: one a test process kept loaded must go first
        try:
            state, reused = acquire_server(files, spec, pipeline.engine_idle_seconds, layout.root, slot=slot)
            secret = files.secret()
            if secret is None:
                raise EngineServerError(f"the engine host in {files.folder} has no secret file")
            yield EngineUse(ServedEngine(state, spec, secret), "server", reused,
                            0.0 if reused else state.load_seconds or 0.0)
        finally:
            files.release_lease()
        return
    stop_server(files)
    reap_orphaned_engines(layout.root, slot)
    engine, reused = engine_for(spec)
    try:
        yield EngineUse(engine, "in_process", reused, 0.0 if reused else engine.load_seconds)
    except EngineFailure:
        release_engine()  # never reused: the retry loads a fresh one
        raise
    finally:
        if not pipeline.keep_engine_loaded:
            release_engine()
