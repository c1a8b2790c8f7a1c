"""The one place that builds an engine. A new engine is a folder beside `vllm/` and one entry in
`_BUILDERS`, chosen by the registry entry's `runtime`."""

from collections.abc import Callable

from batch_pipeline.generation.engine.interface import LoadedEngine
from batch_pipeline.generation.engine.spec import EngineSpec


def _vllm(spec: EngineSpec, metrics: bool) -> LoadedEngine:
    from batch_pipeline.generation.engine.vllm.engine import VllmEngine  # imports vLLM: only where it runs

    return VllmEngine(spec, metrics=metrics)


_BUILDERS: dict[str, Callable[[EngineSpec, bool], LoadedEngine]] = {"vllm": _vllm}


def build_engine(spec: EngineSpec, metrics: bool = False) -> LoadedEngine:
    """`metrics` records the engine's own Prometheus series in this process (the engine host serves them)."""
    return _BUILDERS[spec.entry.runtime](spec, metrics)


_loaded: LoadedEngine | None = None


def engine_for(spec: EngineSpec) -> tuple[LoadedEngine, bool]:
    """The process keeps one engine: reused for the same spec, replaced (old one freed) otherwise."""
    global _loaded
    if _loaded is not None and _loaded.spec.fingerprint == spec.fingerprint:
        _loaded.use(spec)
        return _loaded, True
    release_engine()
    _loaded = build_engine(spec)
    return _loaded, False


def release_engine() -> None:
    global _loaded
    engine, _loaded = _loaded, None
    if engine is not None:
        engine.shutdown()
