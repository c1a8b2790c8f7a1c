"""Chaos soak: batches from the inbox and the openai client while components are SIGKILLed at random.

    python benchmarks/chaos.py [--kills 20] [--rows 300] [--seed 7]

Starts `make run`'s launcher (`python -m batch_pipeline.cli serve`) on a fresh data folder and
instance, submits 6 batches over 2 registry entries (3 dropped into the inbox, 3 through the official
openai client), then SIGKILLs a random target at random moments: a GPU run's worker, the engine host,
the Dagster daemon, the webserver, the shim, or the whole tree (rounds of all six in random order).
Like a supervisor, it starts the launcher again whenever it exited; the launcher itself starts a
service that died again. At the end it prints kills by target, rows
redone per kill, time to recover, and the checks that matter: every custom_id of every batch exactly
once across output and error files, every batch terminal, no orphan engine process, no temp or
partial file. Engines run as the long-lived engine host (BATCH_PIPELINE_ENGINE_MODE=server) so its
Prometheus counters tell how many answers were generated in all; rows redone = answers generated
minus rows returned (a server killed between two scrapes hides at most half a second of answers).
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq
from dagster import DagsterEventType, DagsterInstance
from openai import OpenAI

from batch_pipeline.core.loopback import answers, free_port
from batch_pipeline.core.processes import ENGINE_HOST_MODULE, ENGINE_OWNER_ENV
from batch_pipeline.core.runs import RUNNING_STATUSES
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.queue.runs import is_gpu_run
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline.tools.synth import write_synthetic_batch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = PROJECT_ROOT / "data" / "models" / "SmolLM2-135M-Instruct"
MODELS = ("smollm2-bf16", "smollm2-fp32")
TARGETS = ("run_worker", "engine_host", "daemon", "webserver", "shim", "whole_tree")
_TERMINAL = {"completed", "failed", "cancelled", "expired"}


def _registry() -> str:
    entries = "".join(
        f"  {name}:\n    engine: {{model: {SHIPPED_MODEL}, dtype: {dtype}, max_model_len: 2048, enforce_eager: true}}\n"
        f"    sampling: {{max_tokens: 24, temperature: 0.0}}\n"
        for name, dtype in zip(MODELS, ("bfloat16", "float32")))
    return "models:\n" + entries


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


class Soak:
    def __init__(self, work: Path, seed: int):
        self.work, self.root, self.home = work, work / "data", work / "dagster_home"
        self.root.mkdir()
        (self.root / "registry.yaml").write_text(_registry())
        prepare_instance(self.home, postgres_url=None)
        self.port, self.shim_port = free_port(), free_port()
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "BATCH_PIPELINE_DATA": str(self.root),
                    "BATCH_PIPELINE_SENSOR_INTERVAL": "1", "BATCH_PIPELINE_INBOX_SETTLE_SECONDS": "0.5",
                    "BATCH_PIPELINE_ENGINE_MODE": "server",
                    # The project's compile caches, as a real deployment has them warm.
                    "VLLM_CACHE_ROOT": str(PROJECT_ROOT / "data" / "cache" / "vllm"),
                    "TORCHINDUCTOR_CACHE_DIR": str(PROJECT_ROOT / "data" / "cache" / "torchinductor")}
        self.log = (work / "launcher.log").open("w")
        self.launcher: subprocess.Popen | None = None
        self.rng = random.Random(seed)
        self.restarts = 0
        self.served: dict[tuple[int, int], float] = {}  # (supervisor pid, port) -> answers counted

    # The supervisor's part
    def start(self) -> None:
        self.launcher = subprocess.Popen(
            [sys.executable, "-m", "batch_pipeline.cli", "serve", "--port", str(self.port),
             "--shim-port", str(self.shim_port), "--no-demo"],
            cwd=PROJECT_ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy(self) -> bool:
        return answers(f"http://127.0.0.1:{self.port}/server_info") and \
            answers(f"http://127.0.0.1:{self.shim_port}/health")

    def keep_running(self) -> None:
        """Starts the launcher again if it exited, as systemd or a container runtime would."""
        if self.launcher.poll() is not None:
            self.restarts += 1
            self.start()

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            self.keep_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"services not healthy after {timeout:.0f}s; see {self.log.name}")
            time.sleep(0.5)

    # What there is to kill
    def _tree(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.launcher.pid), *psutil.Process(self.launcher.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def _matching(self, needle: str) -> list[psutil.Process]:
        return [p for p in self._tree() if needle in _cmdline(p)]

    def _run_workers(self) -> list[int]:
        with DagsterInstance.from_config(str(self.home)) as instance:
            pids = []
            for record in instance.get_run_records():
                run = record.dagster_run
                if is_gpu_run(run) and run.status in RUNNING_STATUSES:
                    events = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START).records
                    if events and events[0].event_log_entry.dagster_event.pid:
                        pids.append(events[0].event_log_entry.dagster_event.pid)
            return pids

    def _engine_processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get(ENGINE_OWNER_ENV) == str(self.root.resolve()):
                    found.append(process)
            except psutil.Error:
                continue
        return found

    def kill(self, target: str) -> bool:
        if target == "run_worker":
            pids = self._run_workers()
            victims = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
        elif target == "engine_host":
            victims = [p for p in self._engine_processes() if ENGINE_HOST_MODULE in _cmdline(p)]
        elif target == "daemon":
            victims = self._matching("dagster._daemon run")
        elif target == "webserver":
            victims = self._matching("dagster-webserver") or self._matching("dagster_webserver")
        elif target == "shim":
            victims = self._matching("batch_pipeline.api")
        else:
            victims = self._tree() + self._engine_processes()
        for victim in victims:
            try:
                victim.kill()
            except psutil.Error:
                pass
        return bool(victims)

    # What the soak measures
    def rows_on_disk(self) -> int:
        total = 0
        for chunk in self.root.glob("datasets/*/responses/*/chunks/chunk-*.parquet"):
            try:
                total += pq.ParquetFile(chunk).metadata.num_rows
            except OSError:
                continue
        return total

    def scrape_engine(self) -> None:
        state = ServerFiles(self.root / "engine").read()
        if state is None or state.status != "ready":
            return
        try:
            with urllib.request.urlopen(f"{state.base_url}/metrics", timeout=1) as response:
                text = response.read().decode()
        except OSError:
            return
        answered = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("vllm:request_success_total"))
        key = (state.supervisor.pid, state.port)
        self.served[key] = max(self.served.get(key, 0.0), answered)

    def stop(self) -> None:
        if self.launcher and self.launcher.poll() is None:
            os.killpg(self.launcher.pid, signal.SIGTERM)
            self.launcher.wait(timeout=120)
        self.log.close()


def _drop_inbox_batch(soak: Soak, name: str, rows: int, model: str, seed: int) -> None:
    staging = soak.work / "staging" / f"{name}.jsonl"
    write_synthetic_batch(staging, rows, model, seed=seed, max_tokens=24)
    inbox = soak.root / "inbox"
    inbox.mkdir(exist_ok=True)
    shutil.copyfile(staging, inbox / f"{name}.jsonl.part")
    os.replace(inbox / f"{name}.jsonl.part", inbox / f"{name}.jsonl")


def _submit_api_batch(soak: Soak, client: OpenAI, name: str, rows: int, model: str, seed: int) -> str:
    staging = soak.work / "staging" / f"{name}.jsonl"
    write_synthetic_batch(staging, rows, model, seed=seed, max_tokens=24)
    upload = client.files.create(file=(f"{name}.jsonl", staging.read_bytes()), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h").id


def _retrying(soak: Soak, action, what: str, timeout: float = 300):
    """An API call a client would retry while the shim is down (it may be the one killed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except Exception as exc:  # the openai client raises several kinds while the shim restarts
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {exc}") from exc
            soak.keep_running()
            time.sleep(1)


def _inbox_ids(soak: Soak, name: str, model: str) -> list[str] | None:
    folder = next(soak.root.glob(f"datasets/{name}-*"), None)
    paths = [folder / "responses" / model / file for file in ("output.jsonl", "errors.jsonl")] if folder else []
    if not paths or not all(path.exists() for path in paths):
        return None
    return [json.loads(line)["custom_id"] for path in paths for line in path.read_text().splitlines()]


def _api_ids(client: OpenAI, batch_id: str) -> tuple[str, list[str]]:
    batch = client.batches.retrieve(batch_id)
    ids = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            ids += [json.loads(line)["custom_id"] for line in client.files.content(file_id).text.splitlines()]
    return batch.status, ids


def soak(kills: int, rows: int, seed: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    run = Soak(work, seed)
    run.start()
    outcome: dict = {}
    try:
        run.wait_healthy()
        client = OpenAI(base_url=f"http://127.0.0.1:{run.shim_port}/v1", api_key="chaos", max_retries=0, timeout=30)
        inbox = [(f"inbox{i}", MODELS[i % 2]) for i in range(3)]
        for index, (name, model) in enumerate(inbox):
            _drop_inbox_batch(run, name, rows, model, seed=index)
        api = {}
        for index in range(3):
            model = MODELS[(index + 1) % 2]
            api[_retrying(run, lambda: _submit_api_batch(run, client, f"api{index}", rows, model, 10 + index),
                          "submit")] = model
        print(f"submitted 6 batches of {rows} rows into {work}", flush=True)

        kills_by_target, recoveries = Counter(), []
        # Rounds of every target in a random order, so each is hit about kills / 6 times.
        schedule = [target for _ in range(-(-kills // len(TARGETS)))
                    for target in run.rng.sample(TARGETS, len(TARGETS))][:kills]
        started = time.monotonic()
        while schedule:
            pause_until = time.monotonic() + run.rng.uniform(4, 14)
            while time.monotonic() < pause_until:
                run.scrape_engine()
                run.keep_running()
                time.sleep(0.5)
            target = schedule[0]
            before = run.rows_on_disk()
            if not run.kill(target):  # e.g. no run holds the GPU right now: try it again later
                continue
            schedule.pop(0)
            killed_at = time.monotonic()
            kills_by_target[target] += 1
            print(f"{killed_at - started:6.0f}s kill {target} ({before} rows on disk)", flush=True)
            # Recovered: answers reach the disk again (or nothing was left to do).
            while time.monotonic() - killed_at < 600:
                run.keep_running()
                run.scrape_engine()
                if run.rows_on_disk() > before or run.rows_on_disk() >= 6 * rows:
                    recoveries.append(time.monotonic() - killed_at)
                    break
                time.sleep(0.5)
        print("kills done; waiting for every batch to finish", flush=True)

        def finished() -> dict | None:
            run.scrape_engine()
            run.keep_running()
            results = {name: _inbox_ids(run, name, model) for name, model in inbox}
            if any(ids is None for ids in results.values()):
                return None
            statuses = {}
            for batch_id in api:
                status, ids = _api_ids(client, batch_id)
                if status not in _TERMINAL:
                    return None
                statuses[batch_id], results[batch_id] = status, ids
            return {"ids": results, "api_status": statuses}

        deadline = time.monotonic() + 3600
        while (outcome := _retrying(run, finished, "status")) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("batches did not finish within an hour")
            time.sleep(2)
        outcome.update(kills=kills_by_target, recoveries=recoveries, wall=time.monotonic() - started)
    finally:
        run.stop()
    _report(run, outcome, rows)


def _report(run: Soak, outcome: dict, rows: int) -> None:
    time.sleep(2)
    expected = [f"synth-{i:06d}" for i in range(rows)]
    exact = {name: sorted(ids) == expected for name, ids in outcome["ids"].items()}
    answered = sum(run.served.values())
    returned = sum(len(ids) for ids in outcome["ids"].values())
    kills = sum(outcome["kills"].values())
    leftovers = [f"{p.pid} {_cmdline(p)[:80]}" for p in run._engine_processes()]
    partial = [str(p) for p in run.root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".part")]
    recoveries = sorted(outcome["recoveries"])
    print(f"\nwall time {outcome['wall']:.0f}s, launcher restarts {run.restarts}")
    print("kills by target: " + ", ".join(f"{t} {outcome['kills'][t]}" for t in TARGETS))
    print(f"rows redone: {answered - returned:.0f} in all = {(answered - returned) / max(kills, 1):.1f} per kill "
          f"(target <= 100; {answered:.0f} answers generated, {returned} returned)")
    if recoveries:
        print(f"time to recover (next rows on disk): median {recoveries[len(recoveries) // 2]:.0f}s, "
              f"max {recoveries[-1]:.0f}s over {len(recoveries)} kills")
    print(f"every custom_id exactly once: {all(exact.values())} {exact}")
    print(f"every batch terminal: True; API statuses {sorted(outcome['api_status'].values())}")
    print(f"orphan engine processes: {leftovers or 'none'}")
    print(f"temp or partial files: {partial or 'none'}")
    quarantined = list(run.root.glob("datasets/*/responses/*/quarantine/*"))
    print(f"chunks quarantined: {len(quarantined)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    soak(args.kills, args.rows, args.seed)


if __name__ == "__main__":
    main()
