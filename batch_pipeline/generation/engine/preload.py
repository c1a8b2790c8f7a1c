"""Starts loading the registry's first model when `make run` starts, so the first batch finds its
engine loaded (or loading) instead of paying the whole load after its runs have started."""

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.registry import RegistryError, load_registry
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.engine.environment import configure_engine_environment
from batch_pipeline.generation.engine.server import start_server
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.generation.engine.spec import EngineSpec


def main() -> None:
    settings = Settings()
    layout = DataLayout(settings.data_dir)
    registry_path = layout.registry
    try:
        model, entry = next(iter(load_registry(registry_path).models.items()))
    except (RegistryError, OSError) as exc:  # the runs report it too, naming the batch
        print(f"not preloading a model: {exc}", flush=True)
        return
    configure_engine_environment(layout.root)
    spec = EngineSpec.resolve(model, entry, registry_path.parent)
    if start_server(ServerFiles(layout.engine_server), spec, settings.engine_idle_seconds, layout.root):
        print(f"loading {model} ahead of the first batch (engine host log: {layout.engine_server}/server.log)",
              flush=True)


if __name__ == "__main__":
    main()
