"""Checkpointing cost and memory of the pipeline's engine path, measured side by side.

    python benchmarks/engine_path.py throughput [--rows 1000] [--repeats 2]
        (a) raw `vllm.LLM.chat` over all rows at once vs (b) the pipeline path (continuous feed,
        100-row Parquet chunks, output files), on one engine; prints generated tokens/s and b/a.
    python benchmarks/engine_path.py memory [--sizes 1000 20000]
        peak RSS of the pipeline path per batch size (max_tokens 1), each in a fresh process.
    python benchmarks/engine_path.py paths [--rows 20 500]
        the pipeline path on the in-process engine vs the long-lived vLLM server, per batch size:
        engine start, generation time (after a 20-request warm-up), the share of wall time spent
        starting, and server/in-process tokens/s. One engine at a time: each side starts its own and frees it before the other.

Uses the model registry in $BATCH_PIPELINE_DATA (default data/), entry SmolLM2-135M-Instruct.
"""

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from batch_pipeline.core.registry import load_registry
from batch_pipeline.core.settings import InputLimits, Settings
from batch_pipeline.generation.checkpointing import generate_responses
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore
from batch_pipeline.generation.engine.environment import configure_engine_environment
from batch_pipeline.generation.engine.server import acquire_server, stop_server
from batch_pipeline.generation.engine.server_client import ServedEngine
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.engine.vllm.engine import VllmEngine
from batch_pipeline.generation.engine.vllm.prompts import prompt_messages
from batch_pipeline.generation.engine.vllm.sampling import sampling_kwargs
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.intake.requests_table import write_requests
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline.tools.synth import write_synthetic_batch

MODEL = "SmolLM2-135M-Instruct"
_REPORT = "@report "
_DONE = "@done"
CHUNK_SIZE = 100
MAX_IN_FLIGHT = 1024


def _requests_parquet(folder: Path, rows: int, max_tokens: int | None, seed: int = 1) -> Path:
    source = write_synthetic_batch(folder / "batch.jsonl", rows, MODEL, seed=seed, max_tokens=max_tokens)
    requests = folder / "requests.parquet"
    write_requests(BatchFileScan(source, {MODEL}, InputLimits()).rows(), requests)
    return requests


def _spec() -> EngineSpec:
    data_dir = Settings().data_dir
    configure_engine_environment(data_dir)
    registry_path = data_dir / "registry.yaml"
    return EngineSpec.resolve(MODEL, load_registry(registry_path).entry(MODEL), registry_path.parent)


def _raw_chat(engine: VllmEngine, bodies: list[dict]) -> tuple[int, float]:
    from vllm import SamplingParams

    engine.llm.reset_prefix_cache()  # neither side may reuse the other's prompts
    conversations = [prompt_messages(body) for body in bodies]
    params = [SamplingParams(**sampling_kwargs(body, engine.spec.sampling)) for body in bodies]
    started = time.monotonic()
    outputs = engine.llm.chat(conversations, params, use_tqdm=False)
    seconds = time.monotonic() - started
    return sum(len(c.token_ids) for output in outputs for c in output.outputs), seconds


def _pipeline(engine: VllmEngine, requests: Path, work: Path) -> tuple[int, float]:
    engine.llm.reset_prefix_cache()
    return _timed_run(engine, requests, work)


def throughput(rows: int, repeats: int) -> None:
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        requests = _requests_parquet(tmp, rows, max_tokens=None)
        bodies = [json.loads(b) for b in pq.read_table(requests, columns=["body_json"]).column(0).to_pylist()]
        engine = VllmEngine(_spec())
        _report(f"engine start: {engine.load_seconds:.1f}s; {rows} synthetic chat requests; warming up")
        _raw_chat(engine, bodies[:50])
        raw, piped = [], []
        for repeat in range(repeats):
            tokens, seconds = _raw_chat(engine, bodies)
            raw.append(tokens / seconds)
            _report(f"  (a) raw LLM.chat     run {repeat + 1}: {tokens} tokens in {seconds:.1f}s = {raw[-1]:.0f} tok/s")
            tokens, seconds = _pipeline(engine, requests, tmp / f"run-{repeat}")
            piped.append(tokens / seconds)
            _report(f"  (b) pipeline path    run {repeat + 1}: {tokens} tokens in {seconds:.1f}s = {piped[-1]:.0f} tok/s")
        engine.shutdown()
    a, b = statistics.median(raw), statistics.median(piped)
    _report(f"generated tokens/s (median): raw {a:.0f}, pipeline {b:.0f}; ratio b/a = {b / a:.3f} (target >= 0.97)")


class _TreePeak:
    """Samples the RSS of this process and its children (the engine processes)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        me = psutil.Process()
        while not self._stop.wait(0.2):
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def memory_child(rows: int) -> None:
    tree = _TreePeak()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        requests = _requests_parquet(tmp, rows, max_tokens=1)
        engine = VllmEngine(_spec())
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tokens, seconds = _pipeline(engine, requests, tmp / "run")
        peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        engine.shutdown()
    _report(json.dumps({"rows": rows, "seconds": round(seconds, 1), "peak_main_mb": peak_self / 1024,
                        "main_mb_after_engine_start": baseline / 1024, "peak_tree_mb": tree.stop() / 2**20}))


def _timed_run(engine, requests: Path, work: Path) -> tuple[int, float]:
    store = ChunkStore(work / "chunks")
    started = time.monotonic()
    summary = generate_responses(requests, store, store.prepare(), engine, MODEL, ChunkPolicy(size=CHUNK_SIZE), MAX_IN_FLIGHT)
    write_output_files(store, work / "output.jsonl", work / "errors.jsonl")
    return summary.completion_tokens_generated, time.monotonic() - started


def paths_child(rows: int) -> None:
    spec = _spec()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        requests = _requests_parquet(tmp, rows, max_tokens=None)
        warm_up = _requests_parquet(tmp / "warm-up", 20, max_tokens=None, seed=2)
        engine = VllmEngine(spec)
        _timed_run(engine, warm_up, tmp / "in-process-warm-up")
        tokens, seconds = _timed_run(engine, requests, tmp / "in-process")
        engine.shutdown()
        result = {"rows": rows, "in_process": [engine.load_seconds, tokens, seconds]}
        files = ServerFiles(tmp / "engine")
        started = time.monotonic()
        state, _ = acquire_server(files, spec, idle_seconds=600, data_dir=Settings().data_dir)
        load = time.monotonic() - started
        try:
            _timed_run(ServedEngine(state, spec, files.secret()), warm_up, tmp / "server-warm-up")
            tokens, seconds = _timed_run(ServedEngine(state, spec, files.secret()), requests, tmp / "server")
        finally:
            files.release_lease()
            stop_server(files)
        result["server"] = [load, tokens, seconds]
    _report(json.dumps(result))


def paths(sizes: list[int]) -> None:
    for rows in sizes:
        with contextlib.closing(_measure_in_child("paths-child", str(rows))) as reports:
            result = json.loads(next(reports))
        rates = {}
        for side in ("in_process", "server"):
            load, tokens, seconds = result[side]
            rates[side] = tokens / seconds
            print(f"  {rows:>6} rows, {side:<10}: engine start {load:.1f}s, generation {seconds:.1f}s "
                  f"({rates[side]:.0f} tok/s); start share of wall time {load / (load + seconds):.0%}", flush=True)
        print(f"  {rows:>6} rows: server/in-process tokens/s = {rates['server'] / rates['in_process']:.3f}", flush=True)


def _report(text: str) -> None:
    print(f"{_REPORT}{text}", flush=True)


def _measure_in_child(*args: str):
    """Runs a measurement in its own process group, yields what it reports, and takes the whole
    group down afterwards: no engine process may outlive a benchmark."""
    child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for line in child.stdout:
            if line.startswith(_REPORT):
                text = line[len(_REPORT):].rstrip("\n")
                if text == _DONE:
                    return
                yield text
        raise RuntimeError(f"{' '.join(args)} exited with {child.wait()} before finishing")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def memory(sizes: list[int]) -> None:
    results = []
    for rows in sizes:
        with contextlib.closing(_measure_in_child("memory-child", str(rows))) as reports:
            results.append(json.loads(next(reports)))
        r = results[-1]
        print(f"  {rows:>6} rows: {r['seconds']}s, peak RSS main process {r['peak_main_mb']:.0f} MB "
              f"(after engine start {r['main_mb_after_engine_start']:.0f} MB), "
              f"whole tree {r['peak_tree_mb']:.0f} MB")
    first, last = results[0], results[-1]
    print(f"peak RSS ratio {last['rows']} vs {first['rows']} rows: main process "
          f"{last['peak_main_mb'] / first['peak_main_mb']:.3f}, whole tree "
          f"{last['peak_tree_mb'] / first['peak_tree_mb']:.3f} (target <= 1.2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("throughput")
    run.add_argument("--rows", type=int, default=1000)
    run.add_argument("--repeats", type=int, default=2)
    mem = commands.add_parser("memory")
    mem.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    child = commands.add_parser("memory-child")
    child.add_argument("rows", type=int)
    run = commands.add_parser("paths")
    run.add_argument("--rows", type=int, nargs="+", default=[20, 500])
    child = commands.add_parser("paths-child")
    child.add_argument("rows", type=int)
    child = commands.add_parser("throughput-child")
    child.add_argument("rows", type=int)
    child.add_argument("repeats", type=int)
    args = parser.parse_args()
    if args.command == "throughput":
        for line in _measure_in_child("throughput-child", str(args.rows), str(args.repeats)):
            print(line, flush=True)
    elif args.command == "memory":
        memory(args.sizes)
    elif args.command == "paths":
        paths(args.rows)
    elif args.command == "paths-child":
        paths_child(args.rows)
        _report(_DONE)
    elif args.command == "throughput-child":
        throughput(args.rows, args.repeats)
        _report(_DONE)
    else:
        memory_child(args.rows)


if __name__ == "__main__":
    main()
