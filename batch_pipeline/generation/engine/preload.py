"""Starts loading the registry's first model when `make run` starts, so the first batch finds its
engine loaded (or loading) instead of paying the whole load after its runs have started. With
several slots it loads into slot 0 only; a run for that model prefers the slot where it is warm."""

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.registry import RegistryError, load_registry
from batch_pipeline.core.settings import load_settings_or_exit
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.generation.engine.environment import configure_engine_environment
from batch_pipeline.generation.engine.server import start_server
from batch_pipeline.generation.engine.slots import slot_files
from batch_pipeline.generation.engine.spec import EngineSpec


def main() -> None:
    settings = load_settings_or_exit("preload")
    layout = DataLayout(settings.data_dir)
    registry_path = layout.registry
    try:
        model, entry = next(iter(load_registry(registry_path).models.items()))
    except (RegistryError, OSError) as exc:  # the runs report it too, naming the batch
        print(f"not preloading a model: {exc}", flush=True)
        return
    spec = EngineSpec.resolve(model, entry, registry_path.parent)
    slot = parse_slots(settings.gpu_slots)[0]
    if not slot.fits(entry.engine.tensor_parallel_size):
        print(f"not preloading {model}: it needs more devices than {slot.describe()}", flush=True)
        return
    configure_engine_environment(layout.root, slot, settings.gpu_slot_kind, entry.engine.tensor_parallel_size)
    files = slot_files(layout, slot)
    if start_server(files, spec, settings.engine_idle_seconds, layout.root, slot=slot.index):
        print(f"loading {model} ahead of the first batch in GPU {slot.describe()} (engine host log: {files.log})",
              flush=True)


if __name__ == "__main__":
    main()
