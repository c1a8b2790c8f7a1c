"""`batch-pipeline serve` (what `make run` starts): Dagster (webserver + daemon) and the OpenAI-compatible
shim, plus the demo batch and the first registry model loading in the engine host.

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

from batch_pipeline.api.binding import is_loopback
from batch_pipeline.core.layout import DataLayout, dataset_key, file_sha256
from batch_pipeline.core.privacy import apply_umask, private_folder
from batch_pipeline.core.processes import ProcessIdentity, stop_group, stop_signals
from batch_pipeline.core.settings import Settings
from batch_pipeline.core.single_instance import AlreadyRunning, hold_data_folder
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


_DAGSTER_LOG_FORMATS = {"text": "colored", "json": "json"}
# The service's output goes to the terminal and, appended, to its log file. bash execs into the service, so
# the process started (and watched, and its group stopped) is the service itself; `tee` is in its group,
# so the output outlives a launcher killed without its services (they carry on).
_TEE = 'exec "$@" > >(tee -a "$BATCH_PIPELINE_SERVICE_LOG") 2>&1'


def dagster_webserver_command(host: str, port: int, settings: Settings) -> list[str]:
    """The webserver and the daemon as two services (what the superseded `dagster dev` bundled)."""
    return ["-m", "dagster_webserver", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", host, "-p", str(port),
            "--dagster-log-level", settings.log_level.lower(), "--log-format", _DAGSTER_LOG_FORMATS[settings.log_format]]


def dagster_daemon_command(settings: Settings) -> list[str]:
    return ["-m", "dagster._daemon", "run", "-w", str(PROJECT_ROOT / "workspace.yaml"),
            "--log-level", settings.log_level.lower(), "--log-format", _DAGSTER_LOG_FORMATS[settings.log_format]]


class _Service:
    """One child service, restarted when it dies, as a supervisor would; a service that keeps dying
    (more than `_MAX_RESTARTS` within `_RESTART_WINDOW_SECONDS`) ends `make run` with an error. Its
    output is also appended to `<logs>/<name>.log`."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path):
        logs.mkdir(parents=True, exist_ok=True)
        self.name, self.command = name, command
        self.env = {**env, "PYTHONUNBUFFERED": "1", "BATCH_PIPELINE_SERVICE_LOG": str(logs / f"{name}.log")}
        self.restarts: list[float] = []
        # Groups of earlier incarnations: their run workers carry on and are stopped with the rest.
        self.earlier: list[ProcessIdentity] = []
        self.process, self.identity = self._spawn()

    def _spawn(self) -> tuple[subprocess.Popen, ProcessIdentity | None]:
        process = subprocess.Popen(["bash", "-c", _TEE, self.name, sys.executable, *self.command], cwd=PROJECT_ROOT,
                                   env=self.env, start_new_session=True)
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


def ui_refusal(host: str, allow_remote: bool) -> str | None:
    """Why the Dagster UI must not listen on `host`: it has no authentication, so anyone who reaches it
    can launch, cancel and wipe runs."""
    if is_loopback(host) or allow_remote:
        return None
    return (f"refusing to serve the Dagster UI on {host}: it has no authentication of its own. Keep it on "
            "127.0.0.1 (reach it through an SSH tunnel or an authenticating reverse proxy), or set "
            "BATCH_PIPELINE_UI_ALLOW_REMOTE=1 to let anyone who can reach it in")


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Runs until Ctrl-C or SIGTERM (exit code 0), or until a service keeps dying (1)."""
    apply_umask(settings.share_with_group)  # before anything is written; every child inherits it
    args.host, args.port = args.host or settings.ui_host, args.port or settings.ui_port
    args.shim_port = args.shim_port or settings.shim_port
    if refusal := ui_refusal(args.host, settings.ui_allow_remote):
        sys.exit(f"batch_pipeline: {refusal}")
    try:
        instance_lock = hold_data_folder(settings.data_dir)  # noqa: F841 (held until this process exits)
    except AlreadyRunning as exc:
        sys.exit(f"batch_pipeline: {exc}")
    if not is_loopback(args.host):
        print(f"WARNING: the Dagster UI listens on {args.host} and has no authentication: anyone who can reach "
              "it can launch, cancel and delete runs", file=sys.stderr, flush=True)
    layout = DataLayout(private_folder(settings.data_dir))
    layout.inbox.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BATCH_PIPELINE_SHIM_PORT": str(args.shim_port)}
    logs = layout.root / "logs"
    services = [
        _Service("dagster-webserver", dagster_webserver_command(args.host, args.port, settings), env, logs),
        _Service("dagster-daemon", dagster_daemon_command(settings), env, logs),
        _Service("api", ["-m", "batch_pipeline.api"], env, logs),
    ]
    stopping = stop_signals()
    print(f"Dagster UI: http://{args.host}:{args.port}  OpenAI-compatible API: "
          f"http://127.0.0.1:{args.shim_port}/v1  logs: {logs}  (Ctrl-C stops everything)", flush=True)
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
    return 0 if stopping.is_set() else 1
