"""`make run`: Dagster (webserver + daemon) and the OpenAI-compatible shim, plus the demo batch.

Runs every service in its own process group and takes the whole group down on Ctrl-C or SIGTERM,
with the vLLM server runs keep alive between them, so nothing is left behind.
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
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.server_state import ServerFiles

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_BATCH = PROJECT_ROOT / "data" / "examples" / "demo.jsonl"
_STOP_GRACE_SECONDS = 20


def drop_demo_batch(layout: DataLayout) -> str:
    key = dataset_key(DEMO_BATCH.name, file_sha256(DEMO_BATCH))
    if layout.dataset(key).input.exists():
        return f"demo batch already accepted as dataset {key}; its results are in {layout.dataset(key).folder}"
    layout.inbox.mkdir(parents=True, exist_ok=True)
    partial = layout.inbox / f"{DEMO_BATCH.name}.part"
    shutil.copyfile(DEMO_BATCH, partial)
    os.replace(partial, layout.inbox / DEMO_BATCH.name)
    return f"dropped the demo batch into {layout.inbox} (dataset {key})"


def _start(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, ProcessIdentity]:
    process = subprocess.Popen([sys.executable, *command], cwd=PROJECT_ROOT, env=env, start_new_session=True)
    return process, ProcessIdentity.of(process.pid)


def main() -> None:
    settings = Settings()
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
        _start(["-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", args.host,
                "-p", str(args.port)], env),
        _start(["-m", "batch_pipeline.api"], env),
    ]
    stopping = stop_signals()
    print(f"Dagster UI: http://{args.host}:{args.port}  OpenAI-compatible API: "
          f"http://127.0.0.1:{args.shim_port}/v1  (Ctrl-C stops everything)", flush=True)
    if not args.no_demo:
        print(drop_demo_batch(layout), flush=True)
    try:
        while not stopping.is_set() and all(service.poll() is None for service, _ in services):
            time.sleep(0.5)
    finally:
        for service, identity in services:
            if identity is not None:
                stop_group(identity, _STOP_GRACE_SECONDS)
            service.wait()
        # Runs leave the vLLM server up for the next one; going down takes it along.
        stop_server(ServerFiles(layout.engine_server))
    sys.exit(0 if stopping.is_set() else 1)


if __name__ == "__main__":
    main()
