"""`make run`: Dagster (webserver + daemon) and the OpenAI-compatible shim, plus the demo batch and
the first registry model loading in the engine host.

Runs every service in its own process group, starts a service again when it dies (runs and the
warm engine host carry on), and takes every group down on Ctrl-C or SIGTERM, with the engine host
runs keep alive between them, so nothing is left behind.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from batch_pipeline.core.layout import DataLayout, dataset_key, file_sha256
from batch_pipeline.core.processes import ProcessIdentity, stop_group, stop_signals
from batch_pipeline.core.settings import load_settings_or_exit
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.slots import slot_files

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_BATCH = PROJECT_ROOT / "data" / "examples" / "demo.jsonl"
_STOP_GRACE_SECONDS = 20
_MAX_RESTARTS = 5
_RESTART_WINDOW_SECONDS = 120


def drop_demo_batch(layout: DataLayout) -> str:
    key = dataset_key(DEMO_BATCH.name, file_sha256(DEMO_BATCH))
    if layout.dataset(key).input.exists():
        return f"demo batch already accepted as dataset {key}; its results are in {layout.dataset(key).folder}"
    layout.inbox.mkdir(parents=True, exist_ok=True)
    partial = layout.inbox / f"{DEMO_BATCH.name}.part"
    shutil.copyfile(DEMO_BATCH, partial)
    os.replace(partial, layout.inbox / DEMO_BATCH.name)
    return f"dropped the demo batch into {layout.inbox} (dataset {key})"


class _Service:
    """One child service, restarted when it dies, as a supervisor would; a service that keeps dying
    (more than `_MAX_RESTARTS` within `_RESTART_WINDOW_SECONDS`) ends `make run` with an error."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]):
        self.name, self.command, self.env = name, command, env
        self.restarts: list[float] = []
        # Groups of earlier incarnations: their run workers carry on and are stopped with the rest.
        self.earlier: list[ProcessIdentity] = []
        self.process, self.identity = self._spawn()

    def _spawn(self) -> tuple[subprocess.Popen, ProcessIdentity | None]:
        process = subprocess.Popen([sys.executable, *self.command], cwd=PROJECT_ROOT, env=self.env,
                                   start_new_session=True)
        return process, ProcessIdentity.of(process.pid)

    def keep_alive(self) -> bool:
        """False once the service died too often to be worth starting again."""
        if self.process.poll() is None:
            return True
        now = time.monotonic()
        self.restarts = [at for at in self.restarts if now - at < _RESTART_WINDOW_SECONDS] + [now]
        if len(self.restarts) > _MAX_RESTARTS:
            print(f"{self.name} exited {len(self.restarts)} times within {_RESTART_WINDOW_SECONDS}s; giving up",
                  file=sys.stderr, flush=True)
            return False
        print(f"{self.name} exited with code {self.process.returncode}; starting it again", file=sys.stderr,
              flush=True)
        time.sleep(1)  # let the dead one's port go
        self.earlier += [self.identity] if self.identity is not None else []
        self.process, self.identity = self._spawn()
        return True

    def stop(self) -> None:
        for identity in [self.identity, *self.earlier]:
            if identity is not None:
                stop_group(identity, _STOP_GRACE_SECONDS)
        self.process.wait()


def main() -> None:
    settings = load_settings_or_exit("serve")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=settings.ui_host)
    parser.add_argument("--port", type=int, default=settings.ui_port)
    parser.add_argument("--shim-port", type=int, default=settings.shim_port)
    parser.add_argument("--no-demo", action="store_true", help="do not drop the demo batch")
    args = parser.parse_args()

    layout = DataLayout(settings.data_dir)
    layout.inbox.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BATCH_PIPELINE_SHIM_PORT": str(args.shim_port)}
    services = [
        _Service("dagster dev", ["-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", args.host,
                                 "-p", str(args.port)], env),
        _Service("the OpenAI-compatible API", ["-m", "batch_pipeline.api"], env),
    ]
    stopping = stop_signals()
    print(f"Dagster UI: http://{args.host}:{args.port}  OpenAI-compatible API: "
          f"http://127.0.0.1:{args.shim_port}/v1  (Ctrl-C stops everything)", flush=True)
    if settings.preload_engine and settings.engine_mode != "in_process":
        subprocess.run([sys.executable, "-m", "batch_pipeline.generation.engine.preload"], cwd=PROJECT_ROOT, env=env,
                       check=False)
    if not args.no_demo:
        print(drop_demo_batch(layout), flush=True)
    try:
        while not stopping.is_set() and all(service.keep_alive() for service in services):
            time.sleep(0.5)
    finally:
        for service in services:
            service.stop()
        # Runs leave each slot's engine host up for the next one; going down takes them along.
        for slot in parse_slots(settings.gpu_slots):
            stop_server(slot_files(layout, slot))
    sys.exit(0 if stopping.is_set() else 1)


if __name__ == "__main__":
    main()
