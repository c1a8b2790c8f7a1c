"""How close the finish-time forecast comes (issue 23, "A finish time you can plan on").

    python benchmarks/eta.py [--batches 400:16 160:32 600:8] [--warm-up 200:16 100:48]

Fresh `make run` services (as in end_to_end.py) on a temporary data folder; warm-up batches first,
so the model has run and the forecast uses its measured speed (two answer lengths, so it can tell
the cost per row from the cost per answer token); then the given batches
(ROWS:MAX_TOKENS, greedy synthetic chat requests) created back to back through the official openai
client. For each batch the first `expected_completion_at` the API reports once every batch has been
validated is kept; the batches then run to the end. Prints, per batch, the forecast against the
actual `completed_at`, and the error as a share of the time from forecast to finish (target: within
20% once the model has run once).
"""

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from end_to_end import (
    Context,
    _api_batch,
    _wait_idle,
    _wait_until_serving,
    machine,
    pipeline_session,
    write_batch,
)

from batch_pipeline.core.settings import Settings

_POLL_SECONDS = 0.5
TARGET = 0.20


def _client(session):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{session.shim_port}/v1",
                  api_key=os.environ.get("BATCH_PIPELINE_SHIM_API_KEY") or "benchmark")


def _forecasts(session, client, batch_ids: list[str], timeout: float) -> dict[str, tuple[float, float]]:
    """The first (forecast, when seen) per batch, once all have one (they are validated and queued)."""
    seen: dict[str, tuple[float, float]] = {}

    def all_seen():
        for batch_id in batch_ids:
            if batch_id not in seen:
                batch = client.batches.retrieve(batch_id)
                if expected := getattr(batch, "expected_completion_at", None):
                    seen[batch_id] = (float(expected), time.time())
        return len(seen) == len(batch_ids)

    session.wait(all_seen, "a forecast for every batch", timeout)
    return seen


def _shapes(specs: list[str]) -> list[tuple[int, int]]:
    return [tuple(int(part) for part in spec.split(":")) for spec in specs]


def run(args, work: Path) -> list[dict]:
    project_data = Settings().data_dir
    inputs = work / "inputs"
    inputs.mkdir(parents=True)
    warm_ups = [write_batch(inputs / f"warm-up-{i}.jsonl", rows, tokens, seed=99 + i, shared_prefix=False)
                for i, (rows, tokens) in enumerate(_shapes(args.warm_up))]
    ctx = Context(work, project_data, warm_ups[0], args.timeout, sample_seconds=1.0)
    print(f"{machine()}\nwork folder {work}", flush=True)
    shapes = _shapes(args.batches)
    files = [write_batch(inputs / f"b{i}-{rows}x{tokens}.jsonl", rows, tokens, seed=i, shared_prefix=False)
             for i, (rows, tokens) in enumerate(shapes)]
    with pipeline_session("eta", ctx) as session:
        _wait_until_serving(session)
        for warm_up in warm_ups:
            _api_batch(session, warm_up, args.timeout)
            _wait_idle(session)
        client = _client(session)
        batch_ids = []
        for path in files:
            with path.open("rb") as handle:
                upload = client.files.create(file=handle, purpose="batch")
            batch_ids.append(client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                   completion_window="24h").id)
        forecasts = _forecasts(session, client, batch_ids, args.timeout)

        def all_done():
            batches = [client.batches.retrieve(batch_id) for batch_id in batch_ids]
            return batches if all(batch.status in ("completed", "failed", "expired", "cancelled")
                                  for batch in batches) else None

        done = session.wait(all_done, "every batch to end", args.timeout)
    results = []
    for (rows, tokens), batch in zip(shapes, done):
        expected, seen_at = forecasts[batch.id]
        actual = float(batch.completed_at or 0)
        error = (expected - actual) / max(actual - seen_at, 1.0)
        results.append({"batch": f"{rows} rows x {tokens} tokens", "status": batch.status,
                        "forecast_s": expected - seen_at, "actual_s": actual - seen_at, "error": error})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", nargs="+", default=["400:16", "160:32", "600:8"], help="ROWS:MAX_TOKENS each")
    parser.add_argument("--warm-up", nargs="+", default=["200:16", "100:48"], help="ROWS:MAX_TOKENS each")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--work", type=Path, help="keep inputs, logs and data folders here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="eta-", dir=args.work)) if args.work else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eta-bench-")))
        results = run(args, work)
    print(f"\n{'batch':<24} {'status':<10} {'forecast':>9} {'actual':>9} {'error':>7}")
    for r in results:
        print(f"{r['batch']:<24} {r['status']:<10} {r['forecast_s']:>8.0f}s {r['actual_s']:>8.0f}s {r['error']:>+7.0%}")
    worst = max(abs(r["error"]) for r in results)
    print(f"worst error {worst:.0%} (target: within {TARGET:.0%}: {'met' if worst <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
